"""bridge/backoff.py: the one retry formula, with the randomness given."""
from __future__ import annotations

import pytest

from bridge.backoff import delay
from bridge.finesse.xmppclient import backoff_delay


@pytest.mark.parametrize("attempt, ceiling", [(0, 1.0), (1, 2.0), (3, 8.0), (5, 30.0), (500, 30.0)])
def test_the_ceiling_doubles_up_to_the_cap_and_the_jitter_spans_floor_to_ceiling(attempt, ceiling):
    assert delay(attempt, 1.0, 30.0, rand=lambda: 1.0) == ceiling
    assert delay(attempt, 1.0, 30.0, rand=lambda: 0.0) == 0.0
    assert delay(attempt, 1.0, 30.0, floor=0.5, rand=lambda: 0.0) == 0.5


def test_a_floor_above_the_ceiling_is_the_delay():
    assert delay(0, 1.0, 30.0, floor=5.0, rand=lambda: 0.7) == 5.0


def test_xmpp_reconnects_use_it_between_their_low_and_high():
    assert backoff_delay(0, 1.0, 30.0, rand=lambda: 1.0) == 2.0
    assert backoff_delay(0, 1.0, 30.0, rand=lambda: 0.0) == 1.0
    assert backoff_delay(40, 1.0, 30.0, rand=lambda: 1.0) == 30.0
