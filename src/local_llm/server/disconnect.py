"""Stop work for a client that has gone away.

Starlette notices a disconnect only when it next sends or receives; a request handler that awaits a
long generation would run to the end for nobody. A stream is closed by Starlette itself when the
client leaves (that aborts the generation); this covers the time before an answer starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")

_POLL_S = 0.5


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Await ``work``; if the client disconnects first, cancel it (freeing its lease and engine
    slot) and return None: there is nobody left to answer."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=_POLL_S)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return None
