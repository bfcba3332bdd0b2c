"""The lifecycle journal: what happened to each model, when, why and how long it took.

The scheduler writes an entry at each decision (a load, a park, an unload, with the reason it was
decided) and at each report back (loaded, parked, unloaded, failed, with the seconds it took), so the
journal says the same as the log, as data. Readers are the status page and ``GET /admin/events``
(the last few hundred entries, by sequence number) and the metrics (every entry, as it is written,
through :meth:`Journal.subscribe`). Plain data, synchronous: written on the event loop's thread.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

logger = logging.getLogger(__name__)

# Entries kept for the status page and /admin/events; the metrics see every one as it is written.
JOURNAL_SIZE = 500


class LifecycleEvent(str, Enum):
    """What happened. Decisions (``loading``, ``waking``, ``parking``, ``unloading``) and their
    outcomes (``loaded``, ``woken``, ``parked``, ``unloaded``, ``failed``) come in pairs."""

    LOADING = "loading"
    LOADED = "loaded"
    WAKING = "waking"
    WOKEN = "woken"
    PARKING = "parking"
    PARKED = "parked"
    UNLOADING = "unloading"
    UNLOADED = "unloaded"
    FAILED = "failed"
    DIED = "died"
    PINNED = "pinned"
    UNPINNED = "unpinned"


class Cause(str, Enum):
    """Why a model was taken down (park or unload), in few words: what metrics count by (a label
    of few values); the entry's ``reason`` says it in full."""

    EVICTED = "evicted"  # least recently used idle model, making room for another
    IDLE = "idle"  # past its time to live
    OPERATOR = "operator"  # an operator's unload
    ENGINE_DIED = "engine_died"
    OVER_BUDGET = "over_budget"  # a measurement put the ledger over budget


@dataclass(frozen=True)
class JournalEntry:
    seq: int
    time: float
    model: str
    event: LifecycleEvent
    reason: str | None = None
    # How long the step took (outcomes only).
    seconds: float | None = None
    cause: Cause | None = None
    # Where the model goes (loading) or went (loaded): gpu, gpu+offload or cpu.
    placement: str | None = None


Subscriber = Callable[[JournalEntry], None]


class Journal:
    def __init__(self, size: int = JOURNAL_SIZE) -> None:
        self._entries: deque[JournalEntry] = deque(maxlen=size)
        self._seq = itertools.count(1)
        self._subscribers: list[Subscriber] = []

    def record(
        self,
        now: float,
        model: str,
        event: LifecycleEvent,
        *,
        reason: str | None = None,
        seconds: float | None = None,
        cause: Cause | None = None,
        placement: str | None = None,
    ) -> JournalEntry:
        entry = JournalEntry(next(self._seq), now, model, event, reason, seconds, cause, placement)
        self._entries.append(entry)
        for subscriber in self._subscribers:
            try:
                subscriber(entry)
            except Exception:  # a reader's bug must not stop the scheduler deciding
                logger.exception("a journal subscriber failed on %s", entry)
        return entry

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def since(self, after: int = 0, limit: int | None = None) -> list[JournalEntry]:
        """Entries after sequence number ``after``, oldest first; the newest ``limit`` of them."""
        entries = [entry for entry in self._entries if entry.seq > after]
        return entries[-limit:] if limit else entries

    @property
    def last_seq(self) -> int:
        return self._entries[-1].seq if self._entries else 0
