"""``/docs`` and ``/redoc`` load nothing from another host: every script, style and icon is served here."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from api.app import create_app
from metering.config import Settings
from metering.db import Database

# src="…", href="…" and ReDoc's spec-url="…" of the page, and the url: of Swagger UI's settings.
ASSET_REFERENCE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|\burl:\s*["']([^"']+)["']""")
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


@pytest.fixture
async def docs_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app without credentials: the documentation is public."""
    database = Database(settings.database_url)
    app = create_app(settings, database=database)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://metering.test") as client:
        yield client
    await database.dispose()


def _references(html: str) -> list[str]:
    return [src or url for src, url in ASSET_REFERENCE.findall(html)]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("page", "expected"),
    [
        (
            "/docs",
            {
                "/docs/assets/swagger-ui-bundle.js",
                "/docs/assets/swagger-ui.css",
                "/docs/assets/favicon.png",
                "/openapi.json",
            },
        ),
        ("/redoc", {"/docs/assets/redoc.standalone.js", "/docs/assets/favicon.png", "/openapi.json"}),
    ],
)
async def test_pages_reference_only_local_assets_that_are_served(
    docs_client: httpx.AsyncClient, page: str, expected: set[str]
) -> None:
    response = await docs_client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    references = _references(response.text)
    assert not re.search(r"https?:|//", response.text), "the page names another host"
    assert all(ref.startswith("/") and not ref.startswith("//") for ref in references), references
    assert expected <= set(references), references
    for reference in set(references):
        asset = await docs_client.get(reference)
        assert asset.status_code == 200, reference
        suffix = reference[reference.rfind(".") :]
        assert CONTENT_TYPES[suffix] in asset.headers["content-type"], (reference, asset.headers["content-type"])
        assert len(asset.content) > 100, reference


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_the_swagger_assets_are_swagger_ui(docs_client: httpx.AsyncClient) -> None:
    script = await docs_client.get("/docs/assets/swagger-ui-bundle.js")
    style = await docs_client.get("/docs/assets/swagger-ui.css")
    assert "SwaggerUIBundle" in script.text[:2000]
    assert ".swagger-ui" in style.text[:2000]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_an_unknown_asset_is_404(docs_client: httpx.AsyncClient) -> None:
    assert (await docs_client.get("/docs/assets/../core.py")).status_code == 404
    assert (await docs_client.get("/docs/assets/nothing.js")).status_code == 404


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_the_pages_are_not_in_the_schema(docs_client: httpx.AsyncClient) -> None:
    paths = (await docs_client.get("/openapi.json")).json()["paths"]
    assert not {"/docs", "/redoc"} & set(paths) and not any(path.startswith("/docs/") for path in paths)
