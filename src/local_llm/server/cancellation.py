"""Stop work for a client that has gone away, as vLLM's ``with_cancellation`` does.

Starlette notices a disconnect only when it next sends or receives, so a handler that awaits a long
generation or a big embedding batch would run to the end for nobody. Every POST route therefore runs
its handler as a task beside one that awaits the client's disconnect message; whichever ends first
wins, and a handler whose client left is cancelled (its lease and permit are released, queued
embedding and rerank inputs leave the batch queue, a generation is aborted). A stream, once it has
begun, is closed by Starlette itself when the client leaves, which aborts it the same way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from fastapi import Request, Response

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# nginx's "client closed request": logged, never seen by the client that left.
CLIENT_CLOSED_REQUEST = 499


def with_cancellation(handler: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T | Response]]:
    """Cancel ``handler`` when its client disconnects. The route must take ``request: Request``."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T | Response:
        request = kwargs["request"]
        assert isinstance(request, Request)
        work = asyncio.ensure_future(handler(*args, **kwargs))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if work.done():
            return work.result()
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)  # its clean-up (lease, permit) runs first
        logger.info("%s %s: the client went away; its work was cancelled", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    return wrapper


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
