"""SMS templates in the database: seeding from `templates/*.txt.j2`, versions, lookup by locale.

Every save is a new `TemplateVersion`; a template's current version is what gets sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
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


def find(
    session: Session, kind: str, locale: str | None, fallback_locale: str
) -> MessageTemplate | None:
    """The template for `kind` in the best matching locale: exact, language, fallback, English."""
    wanted = []
    for candidate in (
        locale,
        (locale or "").split("-")[0].split("_")[0],
        fallback_locale,
        DEFAULT_LOCALE,
    ):
        if candidate and candidate.lower() not in wanted:
            wanted.append(candidate.lower())
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
