"""``GET /health``: liveness, for load balancers and the test harness."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class HealthReport(BaseModel):
    """200 while the server serves (``ok``, or ``degraded`` with each failed model and its cause: the
    others keep serving); 503 with ``shutting_down`` once it is stopping."""

    status: Literal["ok", "degraded", "shutting_down"]
    models: int
    loaded: list[str]
    failed: dict[str, str]


class ReadinessReport(BaseModel):
    """``GET /health/ready``: 200 ``ready`` once start-up work is done (engine libraries imported, GGUF
    files imported, the server's own memory measured, pinned models' first loads ended); else 503 with
    ``starting``, ``stalled`` (a loaded model has work but has made no progress for LLM_READY_STALL_S;
    each such model in ``stalled`` with why) or ``shutting_down``, and the reason."""

    status: Literal["ready", "starting", "stalled", "shutting_down"]
    reason: str | None = None
    stalled: dict[str, str] = {}
