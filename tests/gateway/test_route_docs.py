"""Every admin route's docstring is an OpenAPI fragment: ``/openapi.json`` is built from
them when asked, so one that is not valid YAML would fail that request at run time."""

from __future__ import annotations

import pytest
import yaml
from starlette.routing import Route

from gateway import admin
from gateway.jobs import routes as job_routes
from gateway.mesh import api as mesh_api
from gateway.records import api as records_api

ROUTES = [*admin.routes(), *mesh_api.routes(), *records_api.routes(), *job_routes.routes()]


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{sorted(r.methods or [])} {r.path}")
def test_docstring_is_an_openapi_fragment(route: Route) -> None:
    doc = yaml.safe_load(route.endpoint.__doc__ or "")
    assert isinstance(doc, dict), f"{route.path}: the docstring is not a YAML mapping"
    assert isinstance(doc.get("summary"), str), f"{route.path}: no summary"
    assert isinstance(doc.get("responses"), dict), f"{route.path}: no responses"
