"""The retry policy, in one place: when a `retrying` send is tried again, and when it gives up.

Full-jitter exponential backoff, the provider's own reset time when it gives one, and two bounds:
a number of attempts and an age (a dispatch SMS days late is worse than none).
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
