"""Optional API keys: when any are configured, every /v1 route needs one."""

from __future__ import annotations

import secrets

from fastapi import Request

from local_llm.errors import AuthenticationError


def _presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return request.headers.get("x-api-key")


async def require_api_key(request: Request) -> None:
    """FastAPI dependency; keys come from Settings.api_keys (LLM_API_KEYS)."""
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return
    presented = _presented_key(request)
    if presented is None:
        raise AuthenticationError("Missing API key: send `Authorization: Bearer <key>`.")
    if not any(secrets.compare_digest(presented.encode(), key.encode()) for key in keys):
        raise AuthenticationError("Invalid API key.")
