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
