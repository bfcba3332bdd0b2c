"""``GET /metrics``: Prometheus' text format (ours and vLLM's own), under the same key as the rest;
``LLM_METRICS_OPEN_TO_LOCALHOST`` lets a scraper on this machine in without one."""

from __future__ import annotations

import ipaddress

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from local_llm.server.auth import require_api_key
from local_llm.server.openapi import METRICS_RESPONSES
from local_llm.telemetry import Metrics

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, responses=METRICS_RESPONSES)
async def metrics(request: Request) -> Response:
    if not (request.app.state.settings.metrics_open_to_localhost and _from_this_machine(request)):
        await require_api_key(request)
    exporter: Metrics = request.app.state.metrics
    body = await exporter.exposition(request.app.state.manager)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _from_this_machine(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
