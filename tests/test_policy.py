"""The eviction policy, table-driven, with no model anywhere."""

from __future__ import annotations

import pytest

from local_llm.manager.policy import Eviction, ResidentModel, evictions_to_admit, evictions_to_trim


def idle(name: str, last_used: float) -> ResidentModel:
    return ResidentModel(name, in_flight=0, last_used=last_used)


def busy(name: str, last_used: float) -> ResidentModel:
    return ResidentModel(name, in_flight=2, last_used=last_used)


def loading(name: str) -> ResidentModel:
    return ResidentModel(name, in_flight=0, last_used=0.0, loading=True)


def pinned(name: str, last_used: float) -> ResidentModel:
    return ResidentModel(name, in_flight=0, last_used=last_used, pinned=True)


ADMIT_CASES = [
    ("room left", [idle("a", 1)], 2, Eviction(())),
    ("empty cache", [], 1, Eviction(())),
    ("full: evict the least recently used", [idle("a", 5), idle("b", 1), idle("c", 3)], 3, Eviction(("b",))),
    (
        "two over: two oldest, oldest first",
        [idle("a", 5), idle("b", 1), idle("c", 3)],
        2,
        Eviction(("b", "c")),
    ),
    ("busy models are never evicted", [busy("a", 1), idle("b", 9)], 2, Eviction(("b",))),
    ("all busy: proceed over capacity", [busy("a", 1), busy("b", 2)], 2, Eviction((), short_by=1)),
    ("a loading model is not evictable", [loading("a"), idle("b", 9)], 2, Eviction(("b",))),
    ("pinned models stay", [pinned("a", 0), idle("b", 9)], 2, Eviction(("b",))),
    ("partly short", [busy("a", 1), idle("b", 2), busy("c", 3)], 1, Eviction(("b",), short_by=2)),
    ("unlimited", [idle("a", 1), idle("b", 2)], None, Eviction(())),
    ("ties broken by name", [idle("b", 1), idle("a", 1)], 2, Eviction(("a",))),
]


@pytest.mark.parametrize(
    ("case", "resident", "capacity", "expected"), ADMIT_CASES, ids=[c[0] for c in ADMIT_CASES]
)
def test_evictions_to_admit(
    case: str, resident: list[ResidentModel], capacity: int | None, expected: Eviction
) -> None:
    assert evictions_to_admit(resident, capacity) == expected


TRIM_CASES = [
    ("within capacity", [idle("a", 1), idle("b", 2)], 2, Eviction(())),
    ("one over after a burst", [busy("a", 1), idle("b", 2), idle("c", 3)], 2, Eviction(("b",))),
    ("over but all busy", [busy("a", 1), busy("b", 2)], 1, Eviction((), short_by=1)),
    ("unlimited", [idle("a", 1)] * 5, None, Eviction(())),
]


@pytest.mark.parametrize(
    ("case", "resident", "capacity", "expected"), TRIM_CASES, ids=[c[0] for c in TRIM_CASES]
)
def test_evictions_to_trim(
    case: str, resident: list[ResidentModel], capacity: int | None, expected: Eviction
) -> None:
    assert evictions_to_trim(resident, capacity) == expected
