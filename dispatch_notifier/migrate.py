"""Alembic, driven from our settings: `db upgrade`, the current revision, the head revision.

The migration scripts live in the top-level `migrations/` folder.

Only `db upgrade` runs Alembic. The running service (`serve`, `worker`, `/readyz`) only compares
two revision ids, and reads both without importing Alembic: Alembic brings Mako, Pygments and every
SQLAlchemy dialect along, about 10 MB in each process that imports it. `tests/test_migrations.py`
checks that both readings agree with Alembic's own.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

from dispatch_notifier.config import PROJECT_ROOT

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
# Alembic's default; migrations/env.py does not change it.
VERSION_TABLE = "alembic_version"


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on '%' in a URL-encoded password.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


@functools.cache
def head_revision() -> str | None:
    """The newest migration: the one revision no other script names as its `down_revision`.

    What Alembic's `ScriptDirectory.get_current_head()` returns, read from the scripts' literal
    `revision` and `down_revision` assignments; computed once per process.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        constants = _literal_assignments(path, {"revision", "down_revision"})
        if "revision" not in constants:
            continue
        revisions.add(constants["revision"])
        down = constants.get("down_revision")
        if isinstance(down, str):
            parents.add(down)
        elif down:
            parents.update(down)  # a merge revision names several
    heads = revisions - parents
    if len(heads) > 1:
        raise RuntimeError(f"the migrations have several heads: {', '.join(sorted(heads))}")
    return heads.pop() if heads else None


def _literal_assignments(path: Path, names: set[str]) -> dict[str, object]:
    found: dict[str, object] = {}
    for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in names:
            found[target.id] = ast.literal_eval(value)
    return found


def current_revision(connection: Connection) -> str | None:
    """The database's schema revision (None: empty database), as Alembic's
    `MigrationContext.get_current_revision()` reads it from its version table."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(rows) > 1:
        raise RuntimeError(f"the {VERSION_TABLE} table holds several revisions: {rows}")
    return rows[0] if rows else None


def migrations_dir() -> Path:
    return MIGRATIONS_DIR
