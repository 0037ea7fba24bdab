"""The retry policy, in one place: when a `retrying` send is tried again, and when it gives up.

Full-jitter exponential backoff, the provider's own reset time when it gives one, and two bounds:
a number of attempts and an age (a dispatch SMS days late is worse than none).

Which outcome each error gets is decided by the backend (`sms/dotdigital.py`, `classify_*`):
- retried (`retrying`): could not connect, connect timeout, `429` (every worker pauses until
  `X-RateLimit-Reset` / `Retry-After`), `503`, `ERROR_SYSTEM_SERVICETEMPORARILYUNAVAILABLE`;
- permanent (`failed`): other 4xx and the `ERROR_*` tokens for credit, number, text, credentials;
- `unknown`, never retried automatically: read timeout, connection broken after sending,
  `500`/`502`/`504`, an unreadable answer, a worker that died while `sending`.
This module decides when: attempt n waits uniform(0, min(cap, base * 2^(n-1))) seconds, but not
before the provider's reset time; after `max_attempts` tries, or once the dispatch is older than
`max_age` (checked when claimed and when scheduling), the row becomes `failed` ("expired" or
"gave up after N attempts"). Waiting for quiet hours or the shared rate limit is not an attempt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    max_age: timedelta = timedelta(hours=24)
    base_seconds: float = 2.0
    cap_seconds: float = 600.0
    # A 429 that names no reset time still pauses every worker, for this long.
    pause_without_reset: timedelta = timedelta(seconds=30)

    @classmethod
    def from_config(cls, config: dict) -> RetryPolicy:
        return cls(
            max_attempts=int(config["MAX_ATTEMPTS"]),
            max_age=timedelta(hours=float(config["MAX_AGE_HOURS"])),
            base_seconds=float(config["RETRY_BASE_SECONDS"]),
            cap_seconds=float(config["RETRY_CAP_SECONDS"]),
        )

    def backoff(self, attempts: int, rng: random.Random | None = None) -> timedelta:
        """Full jitter: uniform between 0 and min(cap, base * 2^(attempts-1))."""
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** max(0, attempts - 1))
        return timedelta(seconds=(rng or random).uniform(0, ceiling))

    def next_attempt(
        self,
        *,
        attempts: int,
        created_at: datetime,
        now: datetime,
        not_before: datetime | None = None,
        rng: random.Random | None = None,
    ) -> datetime | None:
        """When to try again after `attempts` tries, or None to give up ("expired")."""
        if attempts >= self.max_attempts:
            return None
        when = now + self.backoff(attempts, rng)
        if not_before is not None and not_before > when:
            when = not_before
        if when - created_at > self.max_age:
            return None
        return when

    def expired(self, created_at: datetime, now: datetime) -> bool:
        return now - created_at > self.max_age
