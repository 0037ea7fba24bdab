"""The schema comes only from Alembic migrations, and they match the models exactly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from dispatch_notifier import migrate
from dispatch_notifier.models import Base


def test_models_and_migrations_agree(database_url):
    engine = create_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_db_upgrade_creates_the_schema_from_nothing(tmp_path, runner_factory):
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    result = runner_factory(url).invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    engine = create_engine(url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"sources", "deliveries", "notifications", "attempts", "alembic_version"} <= tables


def test_db_upgrade_on_postgresql_from_nothing(postgres_server_url):
    from sqlalchemy import text

    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text("DROP DATABASE IF EXISTS dn_test_upgrade WITH (FORCE)"))
        c.execute(text("CREATE DATABASE dn_test_upgrade"))
    url = postgres_server_url.rsplit("/", 1)[0] + "/dn_test_upgrade"
    try:
        migrate.upgrade(url)
        engine = create_engine(url)
        with engine.connect() as connection:
            assert migrate.current_revision(connection) == migrate.head_revision()
        engine.dispose()
        migrate.upgrade(url)  # running it again changes nothing
    finally:
        with admin.connect() as c:
            c.execute(text("DROP DATABASE IF EXISTS dn_test_upgrade WITH (FORCE)"))
        admin.dispose()


def test_readyz_reports_pending_migrations_then_ready(tmp_path, runner_factory):
    from dispatch_notifier import create_app

    url = f"sqlite:///{tmp_path / 'late.sqlite3'}"
    app = create_app({"DATABASE_URL": url, "INSTANCE_PATH": str(tmp_path / "i"), "TESTING": True})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["status"] == "migrations_pending"
    runner_factory(url).invoke(args=["db", "upgrade"])
    assert app.test_client().get("/readyz").status_code == 200


def test_the_revisions_the_service_reads_are_alembics(tmp_path):
    """`serve`, `worker` and `/readyz` read both revisions without Alembic: same answers."""
    from alembic.script import ScriptDirectory

    alembic_head = ScriptDirectory.from_config(
        migrate.alembic_config("sqlite://")
    ).get_current_head()
    assert migrate.head_revision() == alembic_head
    engine = create_engine(f"sqlite:///{tmp_path / 'r.sqlite3'}")
    try:
        for step in ("empty", "migrated"):
            if step == "migrated":
                migrate.upgrade(str(engine.url))
            with engine.connect() as connection:
                expected = MigrationContext.configure(connection).get_current_revision()
                assert migrate.current_revision(connection) == expected, step
    finally:
        engine.dispose()


def test_serving_and_readiness_do_not_import_alembic(tmp_path):
    """Alembic (with Mako, Pygments, every dialect) costs ~10 MB in each process importing it."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'a.sqlite3'}"
    migrate.upgrade(url)
    code = (
        "import sys\n"
        "from dispatch_notifier import create_app\n"
        f"app = create_app({{'DATABASE_URL': {url!r}, 'INSTANCE_PATH': {str(tmp_path)!r}}})\n"
        "assert app.test_client().get('/readyz').status_code == 200\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
