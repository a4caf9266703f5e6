# -*- test-case-name: tests.unit.test_index -*-
"""One database connection as the index's SQL uses it, whatever the database: ``?``
placeholders, rows as tuples, explicit transactions (the connection is in autocommit
mode otherwise, so a read never holds a transaction open)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing
from typing import Any, Protocol

from dicomrst.index.schema import Dialect, SchemaTooNew, migrations


class _Cursor(Protocol):
    @property
    def description(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class _Connection(Protocol):
    def execute(self, sql: Any, params: Sequence[object] = ...) -> Any: ...

    def cursor(self) -> Any: ...

    def close(self) -> None: ...


class Session:
    """A connection (sqlite3's or psycopg's) and its `Dialect`."""

    def __init__(self, connection: _Connection, dialect: Dialect) -> None:
        self.connection = connection
        self.dialect = dialect
        self._postgres = dialect.name == "postgresql"

    def execute(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows ([] for a statement without any)."""
        if self._postgres:
            sql = sql.replace("?", "%s")
        cursor: _Cursor = self.connection.execute(sql, tuple(params))
        if cursor.description is None:
            return []
        return [tuple(row) for row in cursor.fetchall()]

    def executemany(self, sql: str, params: Sequence[Sequence[object]]) -> None:
        """Run one statement (without rows) for each set of parameters."""
        if not params:
            return
        if self._postgres:
            # psycopg sends an executemany's statements in a pipeline: one round trip.
            with closing(self.connection.cursor()) as cursor:
                cursor.executemany(sql.replace("?", "%s"), [tuple(p) for p in params])
        else:
            with closing(self.connection.cursor()) as cursor:
                cursor.executemany(sql, [tuple(p) for p in params])

    def begin(self) -> None:
        self.execute(self.dialect.begin)

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        try:
            self.execute("ROLLBACK")
        except Exception:
            pass  # no transaction open, or the connection is gone: nothing to undo

    def close(self) -> None:
        self.connection.close()


def migrate(session: Session, steps: Sequence[Sequence[str]] | None = None) -> int:
    """Create or migrate the schema (`schema.migrations` unless `steps` are given); the
    version now.  Raises `SchemaTooNew`."""
    if steps is None:
        steps = migrations(session.dialect)
    session.begin()
    try:
        if session.dialect.lock is not None:
            session.execute(session.dialect.lock)
        session.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        rows = session.execute("SELECT version FROM schema_version")
        if not rows:
            session.execute("INSERT INTO schema_version (version) VALUES (0)")
            current = 0
        else:
            current = int(rows[0][0])
        if current > len(steps):
            raise SchemaTooNew(current, len(steps))
        for version in range(current, len(steps)):
            for statement in steps[version]:
                session.execute(statement)
        if current != len(steps):
            session.execute("UPDATE schema_version SET version = ?", (len(steps),))
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return len(steps)
