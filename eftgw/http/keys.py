"""Typed application state (``web.AppKey``) shared by the HTTP modules."""

from __future__ import annotations

from aiohttp import web

from eftgw.gateway import Gateway
from eftgw.model import Principal

GATEWAY = web.AppKey("gateway", Gateway)
PRINCIPAL_KEY = web.RequestKey("principal", Principal)


def gateway_of(request: web.Request) -> Gateway:
    return request.app[GATEWAY]


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL_KEY]
