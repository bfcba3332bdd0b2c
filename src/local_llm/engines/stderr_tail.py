"""The last lines the server and its child processes wrote to stderr, so a failed engine says why.

vLLM starts each engine in a child process, which logs the real cause of a failed start (a bad
tensor, a missing file, too little memory) to the stderr it inherited and tells the server only
"Engine core initialization failed. See root cause above". ``local-llm serve`` therefore passes its
stderr (fd 2, which children inherit) through a pipe: a thread copies every byte on to the real
stderr at once and keeps the last lines, which an engine reads back when its start fails.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import deque
from collections.abc import Callable

logger = logging.getLogger(__name__)

_KEPT_LINES = 2000
# The last line of a Python traceback: "package.module.SomeError: what went wrong".
_ERROR_LINE = re.compile(r"(?:^|\s)([A-Za-z_][\w.]*(?:Error|Exception|Exit)): (.+)$")
# What vLLM's parent side says instead of the cause; never the answer.
_NOT_THE_CAUSE = ("See root cause above", "EngineCore encountered", "Engine core initialization failed")


class StderrTail:
    """fd 2 through a pipe, copied on unchanged; the last lines kept, numbered."""

    def __init__(self) -> None:
        self._lines: deque[tuple[int, str]] = deque(maxlen=_KEPT_LINES)
        self._count = 0
        self._partial = b""
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []
        self.installed = False

    def install(self) -> None:
        """Route this process's stderr (and its future children's) through the tail; idempotent."""
        if self.installed:
            return
        read_end, write_end = os.pipe()
        real = os.dup(2)
        os.dup2(write_end, 2)
        os.close(write_end)
        self.installed = True
        threading.Thread(target=self._copy, args=(read_end, real), name="stderr-tail", daemon=True).start()

    def mark(self) -> int:
        """A position: :meth:`since` returns the lines written after it."""
        with self._lock:
            return self._count

    def since(self, mark: int) -> list[str]:
        with self._lock:
            return [line for number, line in self._lines if number >= mark]

    def follow(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Hand ``listener`` every complete line from now on, on the copying thread (it must be quick
        and must not write to stderr), until the function returned is called: how a vLLM load reads
        what its engine process is doing."""
        with self._lock:
            self._listeners.append(listener)

        def stop() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return stop

    def _copy(self, read_end: int, real: int) -> None:
        try:
            while chunk := os.read(read_end, 65536):
                view = memoryview(chunk)
                while view:
                    written = os.write(real, view)
                    view = view[written:]
                self._keep(chunk)
        except OSError:
            pass
        finally:
            # Never leave stderr pointing at a pipe nobody reads: writers would block.
            os.dup2(real, 2)

    def _keep(self, chunk: bytes) -> None:
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        lines = [raw.decode("utf-8", errors="replace") for raw in complete]
        with self._lock:
            for line in lines:
                self._lines.append((self._count, line))
                self._count += 1
            listeners = list(self._listeners)
        for listener in listeners:
            for line in lines:
                try:
                    listener(line)
                except Exception:  # a listener's bug must not stop stderr from flowing
                    break


def root_cause(lines: list[str]) -> str | None:
    """The last error a traceback in ``lines`` ended with, as ``SomeError: message``, if any."""
    for line in reversed(lines):
        match = _ERROR_LINE.search(line.rstrip())
        if match and not any(marker in line for marker in _NOT_THE_CAUSE):
            return f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2).strip()}"
    return None


#: The server's one tail (installed by ``local-llm serve``; in tests that run the app in-process it is
#: not, and engines fall back to the message they were given).
STDERR_TAIL = StderrTail()
