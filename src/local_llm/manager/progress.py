"""What an operator sees of slow work: where a load is and how long it has taken, and engines that
have work but stopped making progress.

A first chat load takes 30 to 110 s on a 2-core CPU; :class:`LoadProgress` gives it a stage (told by
the effects and the engine as it moves on), a clock, and the time the last load of that model took,
and logs a line at each stage and a heartbeat while it lasts. :class:`StallWatch` tells an engine
that hangs (vLLM's own /health says 200 while its engine core hangs) from one that is busy: work
pending, and its :class:`~local_llm.engines.base.Progress` count standing still.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from local_llm.engines.base import Progress
from local_llm.manager.scheduler import ModelRecord

logger = logging.getLogger(__name__)

# A load that has said nothing for this long logs where it is.
HEARTBEAT_S = 10.0

Clock = Callable[[], float]


@dataclass(frozen=True)
class Loading:
    """A load (or wake) under way, or a model waiting to load: what its card's ``loading`` shows."""

    stage: str
    elapsed_s: float
    # What the model's last load (or wake) took, waiting for memory not included; None before one.
    expected_s: float | None


def expected_seconds(record: ModelRecord, *, wake: bool) -> float | None:
    """The time the last bring-up of that kind took: the best guess there is of this one's."""
    return record.wake_seconds if wake else record.load_seconds


class LoadProgress:
    """One bring-up's stage and clock. Its methods run on the event loop's thread (engines on other
    threads go through :meth:`listener`), and each stage it enters is logged once."""

    def __init__(
        self, name: str, *, wake: bool, expected_s: float | None, clock: Clock = time.monotonic
    ) -> None:
        self.name = name
        self._verb = "waking" if wake else "loading"
        self._clock = clock
        self._started = self._last_line = clock()
        self.expected_s = expected_s
        self.stage = "starting"

    def enter(self, stage: str) -> None:
        if stage != self.stage:
            self.stage = stage
            self._log()

    def listener(self, loop: asyncio.AbstractEventLoop) -> Callable[[str], None]:
        """What an engine is told to report its stages to, from any thread (never logs there: the
        stderr tail's thread must not write to the stderr it drains)."""

        def heard(stage: str) -> None:
            loop.call_soon_threadsafe(self.enter, stage)

        return heard

    def beat(self) -> None:
        """Log where the load is, when it has said nothing for :data:`HEARTBEAT_S`."""
        if self._clock() - self._last_line >= HEARTBEAT_S:
            self._log()

    async def heartbeat(self) -> None:
        """Beat every second until cancelled (the bring-up's end)."""
        while True:
            await asyncio.sleep(1.0)
            self.beat()

    def view(self) -> Loading:
        return Loading(self.stage, self._clock() - self._started, self.expected_s)

    def _log(self) -> None:
        self._last_line = self._clock()
        last = f", last time {self.expected_s:.0f} s" if self.expected_s is not None else ""
        logger.info(
            "%s %s: %s, %.0f s so far%s", self._verb, self.name, self.stage, self.view().elapsed_s, last
        )


@dataclass(frozen=True)
class Stall:
    """An engine with work pending that has made no progress for ``seconds``."""

    model: str
    pending: int
    seconds: float

    @property
    def reason(self) -> str:
        return (
            f"model {self.model} has {self.pending} requests running or queued and has made no progress "
            f"for {self.seconds:.0f} s"
        )


class StallWatch:
    """When each engine with work last made progress; fed a reading of each at every look."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        # Per model: the progress count last seen, and since when it has stood there with work pending.
        self._seen: dict[str, tuple[int, float]] = {}
        self._stalled: set[str] = set()

    def look(self, readings: dict[str, Progress | None], now: float) -> list[Stall]:
        """The engines stalled now (``readings``: every loaded engine's progress), each logged once as
        it stalls and once as it moves again."""
        stalls = [s for name, progress in readings.items() if (s := self._observe(name, progress, now))]
        for name in set(self._seen) - set(readings):
            del self._seen[name]
        stalled = {s.model for s in stalls}
        for stall in stalls:
            if stall.model not in self._stalled:
                logger.warning(
                    "%s: the engine may hang; /health/ready answers 503 until it moves", stall.reason
                )
        for name in self._stalled - stalled:
            logger.info("model %s makes progress again (or has no work left)", name)
        self._stalled = stalled
        return stalls

    def _observe(self, name: str, progress: Progress | None, now: float) -> Stall | None:
        if progress is None or progress.pending == 0:
            self._seen.pop(name, None)
            return None
        seen = self._seen.get(name)
        if seen is None or seen[0] != progress.done:
            self._seen[name] = (progress.done, now)
            return None
        waited = now - seen[1]
        return Stall(name, progress.pending, waited) if waited >= self.stall_s else None
