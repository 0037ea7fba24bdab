"""SMS templates in the database: seeding from `templates/*.txt.j2`, versions, lookup by locale.

Every save is a new `TemplateVersion`; a template's current version is what gets sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from time import monotonic

from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.orm import Session

from dispatch_notifier.models import MessageTemplate, TemplateVersion, utcnow

FILE_PATTERN = re.compile(r"^(?P<kind>[a-z_]+)(?:\.(?P<locale>[A-Za-z_-]+))?\.txt\.j2$")
DEFAULT_LOCALE = "en"


@dataclass(frozen=True)
class TemplateFile:
    kind: str
    locale: str
    body: str
    path: Path


def read_files(directory: str | Path) -> list[TemplateFile]:
    """The template files in `directory`, parsed from their names."""
    found = []
    for path in sorted(Path(directory).glob("*.txt.j2")):
        match = FILE_PATTERN.match(path.name)
        if match:
            locale = match["locale"] or DEFAULT_LOCALE
            found.append(TemplateFile(match["kind"], locale, path.read_text().strip(), path))
    return found


def save_version(
    session: Session, kind: str, locale: str, body: str, author: str, note: str | None = None
) -> TemplateVersion:
    """Store `body` as the new current version of (kind, locale), creating the template."""
    template = session.scalar(
        select(MessageTemplate).where(
            MessageTemplate.kind == kind, MessageTemplate.locale == locale
        )
    )
    if template is None:
        template = MessageTemplate(kind=kind, locale=locale)
        session.add(template)
        session.flush()
    number = (
        session.scalar(
            select(func.max(TemplateVersion.number)).where(
                TemplateVersion.template_id == template.id
            )
        )
        or 0
    ) + 1
    version = TemplateVersion(
        template_id=template.id, number=number, body=body, author=author, note=note
    )
    session.add(version)
    session.flush()
    template.current_version_id = version.id
    template.updated_at = utcnow()
    session.flush()
    return version


def seed(session: Session, directory: str | Path, *, force: bool = False) -> list[str]:
    """Load template files; only missing templates unless `force`. Returns what changed."""
    changed = []
    for tf in read_files(directory):
        template = session.scalar(
            select(MessageTemplate).where(
                MessageTemplate.kind == tf.kind, MessageTemplate.locale == tf.locale
            )
        )
        current = template.current_version if template else None
        if current is not None and (not force or current.body == tf.body):
            continue
        save_version(session, tf.kind, tf.locale, tf.body, "file", note=f"imported {tf.path.name}")
        changed.append(f"{tf.kind}/{tf.locale}")
    return changed


def _wanted_locales(locale: str | None, fallback_locale: str) -> list[str]:
    """Locales to try, best first: exact, language, fallback, English (lower case, no repeats)."""
    wanted: list[str] = []
    for candidate in (
        locale,
        (locale or "").split("-")[0].split("_")[0],
        fallback_locale,
        DEFAULT_LOCALE,
    ):
        if candidate and candidate.lower() not in wanted:
            wanted.append(candidate.lower())
    return wanted


def find(
    session: Session, kind: str, locale: str | None, fallback_locale: str
) -> MessageTemplate | None:
    """The template for `kind` in the best matching locale: exact, language, fallback, English."""
    wanted = _wanted_locales(locale, fallback_locale)
    rows = session.scalars(
        select(MessageTemplate).where(
            MessageTemplate.kind == kind, func.lower(MessageTemplate.locale).in_(wanted)
        )
    ).all()
    by_locale = {row.locale.lower(): row for row in rows}
    for candidate in wanted:
        if candidate in by_locale:
            return by_locale[candidate]
    return None


@dataclass(frozen=True)
class Current:
    """What a send needs of a template: its locale, whether it is on, its current text."""

    template_id: int
    locale: str
    enabled: bool
    version_id: int | None
    body: str | None


_T, _V = MessageTemplate.__table__.c, TemplateVersion.__table__.c
_CURRENT = (
    select(_T.id, _T.locale, _T.enabled, _T.current_version_id, _V.body)
    .select_from(
        MessageTemplate.__table__.outerjoin(
            TemplateVersion.__table__, _V.id == _T.current_version_id
        )
    )
    .where(
        _T.kind == bindparam("kind"),
        func.lower(_T.locale).in_(bindparam("locales", expanding=True)),
    )
)


class Lookup:
    """`find` for the sender: the template and its current text in one Core query, and the
    answer reused for `ttl` seconds (TEMPLATE_CACHE_SECONDS).

    An edit, a rollback or disabling a template in the console therefore reaches a running
    worker within `ttl` seconds (1 by default); with `ttl` 0 every send reads it afresh.
    """

    MAX_ENTRIES = 256  # (kind, locales) keys; the locale comes from the order, so bound them

    def __init__(self, ttl: float = 0.0) -> None:
        self.ttl = ttl
        self._cache: dict[tuple[str, tuple[str, ...]], tuple[float, Current | None]] = {}

    def find(
        self, connection: Connection | Session, kind: str, locale: str | None, fallback_locale: str
    ) -> Current | None:
        """`connection` is used only when the answer is not cached (a Session then opens one)."""
        wanted = _wanted_locales(locale, fallback_locale)
        key = (kind, tuple(wanted))
        if self.ttl > 0:
            hit = self._cache.get(key)
            if hit is not None and monotonic() < hit[0]:
                return hit[1]
        found = self._read(connection, kind, wanted)
        if self.ttl > 0:
            if len(self._cache) >= self.MAX_ENTRIES:
                self._cache.clear()
            # Counted from after the read: an answer is at most `ttl` seconds old when used.
            self._cache[key] = (monotonic() + self.ttl, found)
        return found

    @staticmethod
    def _read(connection: Connection | Session, kind: str, wanted: list[str]) -> Current | None:
        rows = connection.execute(_CURRENT, {"kind": kind, "locales": wanted}).all()
        by_locale = {row.locale.lower(): row for row in rows}
        for candidate in wanted:
            row = by_locale.get(candidate)
            if row is not None:
                return Current(row.id, row.locale, row.enabled, row.current_version_id, row.body)
        return None
