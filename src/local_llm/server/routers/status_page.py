"""``GET /`` and ``HEAD /``: the status page for a browser, Ollama's greeting for everyone else.

Ollama answers ``/`` with 200 ``Ollama is running``, and its clients (VS Code's provider, Open WebUI)
probe it that way before they use ``/api``; a browser asks for ``text/html`` and gets the page. The
page is a static file that holds no data: it reads the JSON routes with the admin API's key, so ``/``
itself needs none (nothing behind it is readable without the key).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from local_llm.server.openapi import STATUS_PAGE_RESPONSES

router = APIRouter(tags=["status"])

OLLAMA_GREETING = "Ollama is running"


@cache
def _page() -> str:
    """The page as shipped in the package (package data: server/static/), read once."""
    return files("local_llm.server").joinpath("static/status.html").read_text(encoding="utf-8")


# Two decorators, not one api_route: each method needs its own operation id in the OpenAPI document.
@router.get(
    "/",
    operation_id="status_page",
    summary="The status page (text/html), or Ollama's greeting",
    response_class=PlainTextResponse,
    responses=STATUS_PAGE_RESPONSES,
)
@router.head(
    "/",
    operation_id="status_page_head",
    summary="Ollama's probe: 200 with the greeting's headers",
    response_class=PlainTextResponse,
    responses=STATUS_PAGE_RESPONSES,
)
async def status_page(request: Request) -> Response:
    # The answer depends on Accept: a cache must not hand the page to an Ollama client or the reverse.
    vary = {"Vary": "Accept"}
    if "text/html" in request.headers.get("accept", ""):
        return HTMLResponse(_page(), headers=vary)
    return PlainTextResponse(OLLAMA_GREETING, headers=vary)
