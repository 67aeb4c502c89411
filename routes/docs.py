"""Swagger UI (/docs) and ReDoc (/redoc) from the app's own files: their scripts and styles are vendored in
``static/vendor/`` (from the npm registry, with their licenses), so the docs work offline, air-gapped or behind a
firewall, where FastAPI's defaults (a CDN, Google Fonts) leave a blank page. Open to all, like the schema."""

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

SWAGGER_UI = "/static/vendor/swagger-ui"
REDOC = "/static/vendor/redoc"

router = APIRouter(include_in_schema=False)


def _page(request: Request, tool: str) -> dict[str, str]:
    """What both pages are given: where the schema is, and their title."""
    return {"openapi_url": request.app.openapi_url, "title": f"{request.app.title} - {tool}"}


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        **_page(request, "Swagger UI"),
        swagger_js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER_UI}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER_UI}/favicon-32x32.png",
        swagger_ui_parameters=request.app.swagger_ui_parameters,
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        **_page(request, "ReDoc"),
        redoc_js_url=f"{REDOC}/redoc.standalone.js",
        redoc_favicon_url=f"{SWAGGER_UI}/favicon-32x32.png",
        with_google_fonts=False,
    )
