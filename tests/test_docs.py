"""Swagger UI at /docs and ReDoc at /redoc work offline: their scripts and styles are the app's own files
(``static/vendor/``), not a CDN's. Checked in a headless Chromium that resolves no host name but 127.0.0.1."""

import re
from typing import Any

import pytest
from browser import DevTools
from fastapi.testclient import TestClient
from harness import Server


def _operations(schema: dict[str, Any]) -> int:
    return sum(len(operations) for operations in schema["paths"].values())


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_load_only_the_apps_own_assets(service: TestClient, path: str) -> None:
    page = service.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="([^"]+)"|(?:url): *["\']([^"\']+)', page.text)
    urls = [url for match in assets for url in match if url]
    assert urls, page.text
    for url in urls:
        assert url.startswith("/"), f"{path} needs the internet for {url}"
        assert service.get(url).status_code == 200, url
    assert "fonts.googleapis.com" not in page.text and "cdn.jsdelivr.net" not in page.text


def test_vendored_docs_assets_keep_their_licenses(service: TestClient) -> None:
    for asset in ["swagger-ui/LICENSE", "swagger-ui/NOTICE", "redoc/LICENSE", "redoc/redoc.standalone.js.LICENSE.txt"]:
        assert service.get(f"/static/vendor/{asset}").status_code == 200, asset


def test_swagger_ui_and_redoc_render_the_operations_with_no_network(browser: DevTools, server: Server) -> None:
    operations = _operations(server.get("/openapi.json"))
    browser.send("Page.enable")
    browser.send("Network.enable")
    browser.send("Page.navigate", url=f"{server.base}/docs")
    shown = browser.wait_for(
        f"document.querySelectorAll('.opblock').length >= {operations} && document.querySelectorAll('.opblock').length",
        60,
        f"Swagger UI to list the {operations} operations",
    )
    assert shown == operations
    assert browser.evaluate("document.querySelector('.info .title')?.textContent").startswith("GRPO API")
    browser.send("Page.navigate", url=f"{server.base}/redoc")
    browser.wait_for(
        f"document.querySelectorAll('[data-section-id^=\"operation/\"]').length >= {operations}",
        60,
        f"ReDoc to list the {operations} operations",
    )
    browser.send("Runtime.evaluate", expression="1")  # collect the last network events
    elsewhere = [request["url"] for request in browser.requests if not request["url"].startswith(server.base)]
    # ReDoc's bundle hard-codes its "API docs by Redocly" footer logo, the one thing left on a CDN (an <img> that
    # stays empty offline; no option turns it off); everything the docs need came from the app.
    cosmetic = ("data:", "blob:", "https://cdn.redoc.ly/redoc/logo-mini.svg")
    assert not [url for url in elsewhere if not url.startswith(cosmetic)], elsewhere
