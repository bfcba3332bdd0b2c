"""Liveness and readiness for load balancers, orchestrators and the test harness: no auth, no model work.

``/health`` is liveness: 200 while the server serves: ``ok``, or ``degraded`` with each failed model
and its cause (the others keep serving; the next request for a failed model loads it again). 503 once
it is shutting down.

``/health/ready`` is readiness: 200 once the start-up work is done and no loaded engine is stalled;
503 with the reason before, while one is stalled (vLLM's own /health says 200 while its engine hangs),
and while shutting down. Compose and Kubernetes route traffic by it; restarts go by ``/health``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from local_llm.manager import ModelManager, ModelState
from local_llm.protocol.health import HealthReport, ReadinessReport
from local_llm.server.openapi import HEALTH_RESPONSES, READY_RESPONSES
from local_llm.server.serving.base import Admission
from local_llm.server.serving.models import ModelsService

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthReport, responses=HEALTH_RESPONSES)
async def health(request: Request) -> JSONResponse:
    models: ModelsService = request.app.state.models
    admission: Admission = request.app.state.admission
    cards = models.list().data
    failed = {card.id: card.error or "unknown" for card in cards if card.state is ModelState.FAILED}
    report = HealthReport(
        status="shutting_down" if admission.closing else ("degraded" if failed else "ok"),
        models=len(cards),
        loaded=[card.id for card in cards if card.state is ModelState.LOADED],
        failed=failed,
    )
    return JSONResponse(report.model_dump(), status_code=503 if admission.closing else 200)


@router.get("/health/ready", response_model=ReadinessReport, responses=READY_RESPONSES)
async def ready(request: Request) -> JSONResponse:
    manager: ModelManager = request.app.state.manager
    admission: Admission = request.app.state.admission
    readiness = manager.readiness()
    stalled = {stall.model: stall.reason for stall in readiness.stalled}
    if admission.closing:
        report = ReadinessReport(
            status="shutting_down", reason="the server is shutting down", stalled=stalled
        )
    else:
        report = ReadinessReport(status=readiness.status, reason=readiness.reason, stalled=stalled)
    return JSONResponse(report.model_dump(), status_code=200 if report.status == "ready" else 503)
