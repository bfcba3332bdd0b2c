"""Liveness for load balancers and the test harness: no auth, no model work."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(request: Request) -> dict[str, object]:
    return {"status": "ok", "models": len(request.app.state.models.list().data)}
