"""Baselines for the ingestion benchmark: a bare Flask app, served exactly as `serve` serves ours.

`ok` answers 200 (the framework's ceiling); `store` stores the raw body with one INSERT and commit
through the same engine settings as the service (SQLite: WAL flushed at every commit, busy timeout,
BEGIN IMMEDIATE). `store-autocommit` runs that INSERT in autocommit on PostgreSQL, with no BEGIN
and COMMIT, as the service stores its usual webhook (on SQLite it is `store`).
"""

from __future__ import annotations

import argparse
from typing import Any

from flask import Flask, Response, jsonify, request
from sqlalchemy import Column, Integer, MetaData, Table, Text, insert

from dispatch_notifier import serve
from dispatch_notifier.db import make_engine

metadata = MetaData()
raw_bodies = Table(
    "bench_raw_bodies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("body", Text, nullable=False),
)


def create_table(url: str) -> None:
    engine = make_engine(url)
    metadata.create_all(engine)
    engine.dispose()


def baseline(kind: str, url: str) -> Flask:
    app = Flask("baseline")
    engine = make_engine(url) if kind.startswith("store") else None
    if engine is not None and kind == "store-autocommit" and engine.dialect.name == "postgresql":
        engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.post("/webhooks/<source_name>")
    def receive(source_name: str) -> Response:
        body = request.get_data()
        if engine is not None:
            with engine.begin() as connection:
                connection.execute(insert(raw_bodies).values(body=body.decode("utf-8", "replace")))
        return jsonify({"status": "accepted", "notifications": []})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["ok", "store", "store-autocommit"])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.kind != "ok":
        create_table(args.database_url)

    # The very code path of `dispatch-notifier serve --no-worker`: same gunicorn options (gthread,
    # threads, keepalive, timeouts), only the application it loads in each worker differs.
    def load(_self: Any) -> Flask:
        return baseline(args.kind, args.database_url)

    serve.GunicornApp.load = load  # type: ignore[method-assign]
    serve.serve("127.0.0.1", args.port, args.workers, with_worker=False)


if __name__ == "__main__":
    main()
