"""Quiet hours: no dispatch SMS at night in the recipient's time zone; such sends wait instead.

The zone comes from the number (libphonenumber's time zone data), else the source's `timezone`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezones

_WINDOW = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*-\s*([01]?\d|2[0-3]):([0-5]\d)\s*$")


@dataclass(frozen=True)
class QuietHours:
    """A daily window such as 21:00-08:00 (it may cross midnight); the end is exclusive."""

    start: time
    end: time

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def end_if_inside(self, local: datetime) -> datetime | None:
        """The local time the window ends if `local` lies inside it, else None."""
        clock = local.timetz().replace(tzinfo=None)
        if self.start == self.end:
            return None
        if self.start < self.end:
            inside = self.start <= clock < self.end
            end_day = local.date()
        else:  # crosses midnight
            inside = clock >= self.start or clock < self.end
            end_day = local.date() + timedelta(days=1) if clock >= self.start else local.date()
        if not inside:
            return None
        return datetime.combine(end_day, self.end, tzinfo=local.tzinfo)


def parse_quiet_hours(text: str | None) -> QuietHours | None:
    """'21:00-08:00' -> QuietHours; None or '' -> off. ValueError with a clear message otherwise."""
    if text is None or not text.strip() or text.strip().lower() == "off":
        return None
    match = _WINDOW.match(text)
    if not match:
        raise ValueError(f"quiet hours must look like 21:00-08:00, got {text!r}")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if (h1, m1) == (h2, m2):
        raise ValueError("quiet hours must not start and end at the same time")
    return QuietHours(time(h1, m1), time(h2, m2))


def check_timezone(name: str) -> ZoneInfo:
    """The zone for an IANA name such as Europe/London; ValueError if it is unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name such as Europe/London"
        ) from None


def recipient_zones(e164: str | None, source_zone: str | None) -> list[ZoneInfo]:
    """Where the recipient probably is.

    The number's zones when libphonenumber knows them; if the source's zone is one of them,
    just that one. A number spanning several zones (Australia) is quiet if any of them is.
    Otherwise the source's zone, else UTC.
    """
    names: list[str] = []
    if e164:
        try:
            number = phonenumbers.parse(e164)
            names = [z for z in phone_timezones.time_zones_for_number(number) if z != "Etc/Unknown"]
        except phonenumbers.NumberParseException:
            names = []
    if source_zone and (not names or source_zone in names):
        names = [source_zone]
    zones = []
    for name in names:
        try:
            zones.append(ZoneInfo(name))
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return zones or [ZoneInfo("UTC")]


def hold_until(
    window: QuietHours | None, e164: str | None, source_zone: str | None, now: datetime
) -> datetime | None:
    """When a send to `e164` may go out (UTC) if `now` is inside quiet hours, else None."""
    if window is None:
        return None
    ends = []
    for zone in recipient_zones(e164, source_zone):
        end = window.end_if_inside(now.astimezone(zone))
        if end is not None:
            ends.append(end.astimezone(UTC))
    return max(ends) if ends else None
