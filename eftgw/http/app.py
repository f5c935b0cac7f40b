"""Builds the aiohttp application from a :class:`~eftgw.gateway.Gateway`."""

from __future__ import annotations

from aiohttp import web

from eftgw import metrics
from eftgw.gateway import Gateway
from eftgw.http import accounts, files, integration, openapi, session, tus, webclient
from eftgw.http.keys import GATEWAY
from eftgw.http.middleware import (
    cors_middleware,
    errors_middleware,
    log_context_middleware,
    security_headers_middleware,
)

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok", "region": request.app[GATEWAY].settings.region})


@routes.get("/metrics")
async def prometheus(request: web.Request) -> web.StreamResponse:
    """Prometheus text format: counts and ages only, nothing about any case."""
    return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")


@routes.get("/api/v1/openapi.json")
async def openapi_document(request: web.Request) -> web.StreamResponse:
    document = openapi.document()
    document["servers"] = [{"url": request.app[GATEWAY].settings.resolved_public_url}]
    return web.json_response(document)


def make_app(gateway: Gateway) -> web.Application:
    app = web.Application(
        middlewares=[log_context_middleware, security_headers_middleware, cors_middleware, errors_middleware],
        client_max_size=1024 * 1024,  # JSON and form bodies; upload bodies are streamed, not read whole
    )
    app[GATEWAY] = gateway
    tables = (
        routes,
        session.routes,
        tus.routes,
        files.routes,
        accounts.routes,
        integration.routes,
        webclient.routes,
    )
    for table in tables:
        app.add_routes(table)
    return app
