"""``/docs`` and ``/redoc`` with their scripts and styles served from this process, so they work offline.

FastAPI's own pages load Swagger UI and ReDoc from a CDN: without internet they are blank.
The assets come from the ``fastapi-offline`` package (its ``static`` folder), mounted at
``/docs/assets``; only the two pages are ours.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs/assets"
ASSETS_DIR = files("fastapi_offline") / "static"

router = APIRouter(include_in_schema=False)


def _assets_url(request: Request, name: str) -> str:
    # Behind a proxy that strips a prefix, the page must ask for the assets under that prefix.
    return f"{request.scope.get('root_path', '')}{ASSETS_PATH}/{name}"


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    return get_swagger_ui_html(
        openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}",
        title=f"{app.title} - Swagger UI",
        swagger_js_url=_assets_url(request, "swagger-ui-bundle.js"),
        swagger_css_url=_assets_url(request, "swagger-ui.css"),
        swagger_favicon_url=_assets_url(request, "favicon.png"),
        swagger_ui_parameters=app.swagger_ui_parameters,
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    return get_redoc_html(
        openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}",
        title=f"{app.title} - ReDoc",
        redoc_js_url=_assets_url(request, "redoc.standalone.js"),
        redoc_favicon_url=_assets_url(request, "favicon.png"),
        with_google_fonts=False,
    )


def install_docs(app: FastAPI) -> None:
    """Add the two pages and their assets; the app must be built with ``docs_url=None, redoc_url=None``."""
    # A router's mounts are not carried over by ``include_router``: the assets are mounted on the app.
    app.mount(ASSETS_PATH, StaticFiles(directory=str(ASSETS_DIR)), name="docs-assets")
    app.include_router(router)
