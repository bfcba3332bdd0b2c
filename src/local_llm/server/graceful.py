"""uvicorn, with this server's shutdown: requests in progress get a grace period, and an ending."""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI


class GracefulServer(uvicorn.Server):
    """On SIGTERM (or Ctrl-C): no new connections, new requests on open ones get 503; requests in
    progress finish for up to LLM_SHUTDOWN_GRACE_S, and the rest end with an error (a stream with a
    final error event, then its end marker); then uvicorn's own shutdown, and the app's lifespan,
    which stops the engines."""

    def __init__(self, app: FastAPI, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        admission = getattr(self._app.state, "admission", None)
        if admission is not None:
            await admission.drain(self._app.state.settings.shutdown_grace_s)
        await super().shutdown(sockets)
