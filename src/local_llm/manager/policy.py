"""The swap decision: pure functions over plain data, no engines, no I/O.

Following llama-swap's split, the manager gathers a snapshot of what is resident, asks these
functions what to evict, and carries the answer out. Tests drive them from tables, with no model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ResidentModel:
    """A model that holds memory now: loaded, or loading."""

    name: str
    in_flight: int
    last_used: float
    loading: bool = False
    pinned: bool = False

    @property
    def evictable(self) -> bool:
        """Only idle, fully loaded, unpinned models may go: a request in flight is never cut off."""
        return self.in_flight == 0 and not self.loading and not self.pinned


@dataclass(frozen=True)
class Eviction:
    """What to unload, least recently used first, and whether that is enough."""

    evict: tuple[str, ...]
    # True when too few models are idle: the caller proceeds over capacity and trims later.
    short_by: int = 0


def _least_recently_used(resident: Sequence[ResidentModel], count: int) -> Eviction:
    if count <= 0:
        return Eviction(())
    idle = sorted((m for m in resident if m.evictable), key=lambda m: (m.last_used, m.name))
    chosen = tuple(m.name for m in idle[:count])
    return Eviction(chosen, short_by=count - len(chosen))


def evictions_to_admit(resident: Sequence[ResidentModel], capacity: int | None) -> Eviction:
    """Before loading one more model: evict until at most ``capacity`` are resident with it.

    ``capacity`` None means unlimited (auto-unload off).
    """
    if capacity is None:
        return Eviction(())
    return _least_recently_used(resident, len(resident) + 1 - capacity)


def evictions_to_trim(resident: Sequence[ResidentModel], capacity: int | None) -> Eviction:
    """After a request ends: bring a cache that went over capacity (all were busy) back within it."""
    if capacity is None:
        return Eviction(())
    return _least_recently_used(resident, len(resident) - capacity)
