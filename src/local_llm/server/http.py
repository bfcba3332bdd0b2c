"""uvicorn's HTTP/1.1 protocol with a bound on what a request's head may make the server buffer.

The limit clients meet is LLM_MAX_REQUEST_HEADER_KB, answered 431 in the API's shape by
:class:`~local_llm.server.middleware.HeaderSizeLimit`, which sees the parsed headers. That check
comes after uvicorn has read the whole head, and uvicorn's parsers bound it differently:

* httptools (what ``uvicorn[standard]`` runs, and uvicorn's choice whenever it is installed) keeps
  any head, however large (a 1 MB header was answered 200), so a client could make the server
  buffer without end;
* h11 refuses an incomplete head over 16 KiB with a plain-text 400, but only when the head does not
  arrive in one read (a 100 KB header on loopback was answered 200).

So the head is cut here, while it streams in, once it is far past the limit (:func:`head_cap_bytes`):
the client gets the same 431 and the connection is closed. Below that cap the middleware decides.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

from local_llm.errors import RequestHeadersTooLargeError
from local_llm.server.errors import local_error_response

# Room for the request line (the URL) and the framing of each header line, beyond the headers.
_REQUEST_LINE_ALLOWANCE = 64 * 1024
# How long a connection whose head was refused is read (and dropped) before it is closed.
_LINGER_S = 5.0


def head_cap_bytes(max_header_bytes: int) -> int:
    """Where reading a head stops: twice the header limit, plus room for the request line, so every
    head the middleware should judge reaches it."""
    return 2 * max_header_bytes + _REQUEST_LINE_ALLOWANCE


def refusal(max_header_bytes: int) -> bytes:
    """The whole HTTP/1.1 response to a head cut short: the API's 431, then the connection closes."""
    error = RequestHeadersTooLargeError(
        f"The request's head is larger than {head_cap_bytes(max_header_bytes)} bytes; headers may "
        f"hold at most {max_header_bytes / 1024:g} KiB (LLM_MAX_REQUEST_HEADER_KB)."
    )
    response = local_error_response(error)
    lines = [b"HTTP/1.1 431 Request Header Fields Too Large"]
    lines += [name + b": " + value for name, value in response.raw_headers]
    lines += [b"connection: close", b"", b""]
    return b"\r\n".join(lines) + bytes(response.body)


def http_protocol(max_header_bytes: int) -> type[asyncio.Protocol] | str:
    """The ``http`` argument of ``uvicorn.Config``: httptools with the head capped, or h11 (whose own
    limit, ``h11_max_incomplete_event_size``, is set to :func:`head_cap_bytes` beside it) where
    httptools is not installed."""
    if importlib.util.find_spec("httptools") is None:
        return "h11"
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    cap = head_cap_bytes(max_header_bytes)
    answer = refusal(max_header_bytes)

    class CappedHttpToolsProtocol(HttpToolsProtocol):
        """Counts the bytes of each head as they arrive (a body's bytes are not counted)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Bytes of the head being read; None while a body is.
            self._head_bytes: int | None = 0
            self._refused = False

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # the rest of a refused head: read and dropped until the connection closes
            if self._head_bytes is not None:
                self._head_bytes += len(data)
                if self._head_bytes > cap:
                    self._refuse()
                    return
            super().data_received(data)

        def _refuse(self) -> None:
            """Answer, then close our side only and drop what still comes: a socket closed with unread
            input is reset, and the client, still sending its head, would lose the answer with it."""
            self.logger.warning("a request head over %d bytes was refused", cap)
            self._refused = True
            self.transport.write(answer)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(_LINGER_S, self.transport.close)

        def on_headers_complete(self) -> None:
            self._head_bytes = None
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._head_bytes = 0  # the next request on this connection begins with its head

    return CappedHttpToolsProtocol
