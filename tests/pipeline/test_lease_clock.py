"""The lease timing of the Redis bus's workers (rtaa_cli/pipeline/fencing.py LeaseClock, docs/scale-out.md
"Ownership"): sans-I/O, so each rule is checked with exact times."""
from __future__ import annotations

from rtaa_cli.pipeline.fencing import LeaseClock

LEASE_MS = 2000  # validity 1.2 s after a renewal's send, renewals every 0.5 s


def test_renewals_are_paced_from_the_previous_send_not_its_reply() -> None:
    clock = LeaseClock(LEASE_MS)
    # Sent at 10.0, answered at 10.35 (a slow round trip): the next goes out at 10.5, not at 10.85.
    assert abs(clock.next_renewal(10.0, 10.35) - 0.15) < 1e-9
    # Answered after a whole period: the next goes out at once.
    assert clock.next_renewal(10.0, 10.6) == 0.0


def test_two_slow_round_trips_in_a_row_keep_the_lease() -> None:
    """The load that lapsed leases before (two 350 ms round trips back to back) no longer does."""
    clock = LeaseClock(LEASE_MS)
    sent = 0.0
    valid = clock.acquired(sent)
    for _ in range(20):
        answered = sent + 0.35
        valid = clock.renewed(valid, sent, answered)
        assert valid is not None
        sent = answered + clock.next_renewal(sent, answered)
    assert abs(valid - (sent - 0.5 + 1.2)) < 1e-9  # trusted 1.2 s after the last renewal's send


def test_a_reply_after_the_validity_lapsed_does_not_revive_the_call() -> None:
    clock = LeaseClock(LEASE_MS)
    valid = clock.acquired(0.0)  # 1.2
    assert clock.renewed(valid, 0.5, 1.19) == 0.5 + 1.2
    assert clock.renewed(valid, 0.5, 1.2) is None  # operations may have been refused meanwhile: drop it
    assert clock.renewed(valid, 0.5, 3.0) is None


def test_an_older_renewal_answered_late_never_shortens_the_validity() -> None:
    clock = LeaseClock(LEASE_MS)
    assert clock.renewed(2.0, 0.5, 1.0) == 2.0
