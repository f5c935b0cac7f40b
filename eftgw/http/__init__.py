"""The HTTPS transport (aiohttp): tus 1.0 uploads, the files API, the launch flow and sessions, the
integration API for the portal, the OpenAPI document and the web client's static files.

Handlers are thin: parse, call a core service, format. Domain errors become JSON
``{"code": ..., "message": ...}`` with the status from :mod:`eftgw.errors` in one middleware.
"""
