"""In-process models load one at a time and never during another model's forward pass (transformers'
``from_pretrained`` changes process-wide torch state while it runs); passes run side by side."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from local_llm.backends import TorchGlobalsLock

pytestmark = pytest.mark.unit
# Long enough for a thread that is free to go to have gone: what "still waiting" is judged by.
SETTLE_S = 0.2


def _in_thread(
    lock_context: Callable[[], AbstractContextManager[None]], entered: threading.Event, leave: threading.Event
) -> threading.Thread:
    def hold() -> None:
        with lock_context():
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    return thread


def test_forward_passes_run_together_and_a_load_waits_for_them() -> None:
    lock = TorchGlobalsLock()
    first, second, loaded = threading.Event(), threading.Event(), threading.Event()
    finish_passes, finish_load = threading.Event(), threading.Event()
    passes = [
        _in_thread(lock.forward_pass, first, finish_passes),
        _in_thread(lock.forward_pass, second, finish_passes),
    ]
    assert first.wait(5)
    assert second.wait(5), "two passes hold the lock at once"
    load = _in_thread(lock.loading, loaded, finish_load)
    assert not loaded.wait(SETTLE_S), "a load waits while passes run"
    finish_passes.set()
    assert loaded.wait(5)
    finish_load.set()
    for thread in [*passes, load]:
        thread.join(5)


def test_a_waiting_load_goes_before_later_passes_and_loads_do_not_overlap() -> None:
    lock = TorchGlobalsLock()
    running, loaded, other_loaded, late_pass = (threading.Event() for _ in range(4))
    finish_pass, finish_load, finish_other, finish_late = (threading.Event() for _ in range(4))
    busy = _in_thread(lock.forward_pass, running, finish_pass)
    assert running.wait(5)
    load = _in_thread(lock.loading, loaded, finish_load)
    assert not loaded.wait(SETTLE_S)
    late = _in_thread(lock.forward_pass, late_pass, finish_late)
    assert not late_pass.wait(SETTLE_S), "a pass that arrives while a load waits waits behind it"
    finish_pass.set()
    assert loaded.wait(5)
    other = _in_thread(lock.loading, other_loaded, finish_other)
    assert not other_loaded.wait(SETTLE_S), "two loads never overlap"
    assert not late_pass.is_set()
    finish_load.set()
    finish_other.set()
    finish_late.set()
    assert late_pass.wait(5)
    assert other_loaded.wait(5)
    for thread in (busy, load, late, other):
        thread.join(5)
