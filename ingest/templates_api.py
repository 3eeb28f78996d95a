"""The stored-template routes of the ingest API (authenticated like its other routes).

PUT    /v1/templates/{name}   create or replace: {"subject", "html", "text"?, "data"?};
                              201 when created, 200 when replaced; each write is a version
GET    /v1/templates/{name}   the current version (?version=n: an older one); 404 if none
DELETE /v1/templates/{name}   remove it and its versions; 404 if there was none
GET    /v1/templates          {"items": [{"name", "version", "updated_ms"}]}, in name order
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from sesflow.common.errors import InputError
from sesflow.common.http import int_param, json_response, read_body
from sesflow.common.settings import Settings
from sesflow.ingest.templates import TemplateStore, check_name, parse_body
from sesflow.ingest.validation import Limits

TEMPLATES = web.AppKey("templates", TemplateStore)
MAX_VERSION = 2**53


class TemplateRoutes:
    def __init__(self, settings: Settings) -> None:
        self.limits = Limits.from_settings(settings)
        self.max_body = settings.max_request_bytes

    async def put(self, request: web.Request) -> web.Response:
        name = check_name(request.match_info["name"])
        body = await read_body(request, self.max_body)
        template = parse_body(body, self.limits)
        version, created = await request.app[TEMPLATES].put(name, template)
        return json_response(
            {"name": name, "version": version, **msgspec.to_builtins(template)},
            status=201 if created else 200,
        )

    async def get(self, request: web.Request) -> web.Response:
        name = check_name(request.match_info["name"])
        version = int_param(request.query.get("version"), "version", 0, 1, MAX_VERSION) or None
        template = await request.app[TEMPLATES].get(name, version)
        if template is None:
            which = f"version {version} of template" if version else "template"
            raise InputError("not_found", f"no {which} named {name!r}", status=404)
        return json_response(msgspec.to_builtins(template))

    async def delete(self, request: web.Request) -> web.Response:
        name = check_name(request.match_info["name"])
        if not await request.app[TEMPLATES].delete(name):
            raise InputError("not_found", f"no template named {name!r}", status=404)
        return json_response({"name": name, "deleted": True})

    async def list(self, request: web.Request) -> web.Response:
        return json_response({"items": await request.app[TEMPLATES].list()})


def add_template_routes(app: web.Application, settings: Settings) -> None:
    routes = TemplateRoutes(settings)
    app.router.add_get("/v1/templates", routes.list)
    app.router.add_put("/v1/templates/{name}", routes.put)
    app.router.add_get("/v1/templates/{name}", routes.get)
    app.router.add_delete("/v1/templates/{name}", routes.delete)
