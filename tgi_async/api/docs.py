"""GET /docs (a route module, like routes/*): Swagger UI over /api-doc/openapi.json, its assets served
from the pinned swagger-ui-bundle package, so the page works offline (TGI bundles its Swagger UI too)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"

router = APIRouter()
router.mount(ASSETS_URL, StaticFiles(directory=swagger_ui_path), name="swagger-ui")


@router.get(DOCS_URL, include_in_schema=False)
async def docs(request: Request) -> Response:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
    )
