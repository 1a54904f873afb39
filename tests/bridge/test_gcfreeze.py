"""bridge/gcfreeze.py: survivors leave the collector's sight, garbage is still freed, thaw gives them back."""
from __future__ import annotations

import gc
import weakref

from bridge.gcfreeze import GcFreezer
from tests.waiting import until


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_freeze_moves_survivors_out_and_cycles_made_after_are_still_collected() -> None:
    freezer = GcFreezer(every=0)
    try:
        kept = Node()
        freezer.freeze_now()
        assert gc.get_freeze_count() > 0 and freezer.freezes == 1
        later = Node()
        gone = weakref.ref(later)
        del later
        gc.collect()
        assert gone() is None  # made after the freeze: collected as usual
        assert kept.me is kept
    finally:
        freezer.thaw()
    assert gc.get_freeze_count() == 0


def test_the_timer_freezes_by_itself() -> None:
    freezer = GcFreezer(every=0.01).start()
    try:
        until(lambda: freezer.freezes > 0, timeout=5, what="a freeze by the timer")
    finally:
        freezer.thaw()
    assert gc.get_freeze_count() == 0
