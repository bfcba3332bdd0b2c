"""Liveness for load balancers and the test harness: no auth, no model work.

200 while the server serves: ``ok``, or ``degraded`` with each failed model and its cause (the others
keep serving; the next request for a failed model loads it again). 503 once it is shutting down.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from local_llm.manager import ModelState
from local_llm.protocol.health import HealthReport
from local_llm.server.openapi import HEALTH_RESPONSES
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
