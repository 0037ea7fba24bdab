"""The retry policy: full-jitter backoff, the provider's reset time, and the two bounds."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from dispatch_notifier.retry import RetryPolicy

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_backoff_is_full_jitter_under_a_doubling_ceiling_with_a_cap():
    policy = RetryPolicy(base_seconds=2, cap_seconds=60)
    rng = random.Random(1)
    for attempts, ceiling in [(1, 2), (2, 4), (3, 8), (6, 60), (20, 60)]:
        waits = [policy.backoff(attempts, rng).total_seconds() for _ in range(200)]
        assert min(waits) >= 0 and max(waits) <= ceiling
        assert max(waits) > ceiling / 2  # spread over the whole range, not a fixed delay


def test_the_providers_reset_time_is_never_undercut():
    policy = RetryPolicy(base_seconds=0.01)
    reset = NOW + timedelta(seconds=45)
    when = policy.next_attempt(attempts=1, created_at=NOW, now=NOW, not_before=reset)
    assert when == reset


def test_giving_up_after_max_attempts():
    policy = RetryPolicy(max_attempts=3)
    assert policy.next_attempt(attempts=2, created_at=NOW, now=NOW) is not None
    assert policy.next_attempt(attempts=3, created_at=NOW, now=NOW) is None


def test_a_dispatch_older_than_the_max_age_is_not_tried_again():
    policy = RetryPolicy(max_age=timedelta(hours=24))
    created = NOW - timedelta(hours=23, minutes=59, seconds=59)
    assert (
        policy.next_attempt(
            attempts=1, created_at=created, now=NOW, not_before=NOW + timedelta(minutes=5)
        )
        is None
    )
    assert policy.expired(NOW - timedelta(hours=25), NOW)
    assert not policy.expired(NOW - timedelta(hours=1), NOW)


def test_the_policy_is_read_from_the_settings():
    policy = RetryPolicy.from_config(
        {"MAX_ATTEMPTS": 5, "MAX_AGE_HOURS": 6, "RETRY_BASE_SECONDS": 1, "RETRY_CAP_SECONDS": 30}
    )
    assert (policy.max_attempts, policy.max_age, policy.base_seconds, policy.cap_seconds) == (
        5,
        timedelta(hours=6),
        1.0,
        30.0,
    )
