# -*- test-case-name: tests.unit.test_index -*-
"""`SqlIndex`: `IIndex` on SQLite or PostgreSQL, its database work off the reactor.

Each database runs the index's statements in threads of its own: SQLite in one thread
(one connection, WAL, ``synchronous=FULL`` so a commit survives a crash), PostgreSQL in a
bounded pool (a connection per thread, autocommit outside explicit transactions).  The
reactor only hands work over and gets results back.

Writes (`add`, `remove`) queue and run in order, as many as are waiting in one
transaction (group commit): a STOW of 200 instances costs a few commits, not 200
fsyncs.  Each Deferred fires once its transaction is committed.  When a batch fails, its
operations are retried one by one, so one bad record fails alone.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import attrs
from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred, FirstError, ensureDeferred, gatherResults
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from dicomrst.errors import UpstreamError
from dicomrst.index.interfaces import IIndex, IndexRecord
from dicomrst.index.records import instance_row
from dicomrst.index.schema import POSTGRESQL, SQLITE, Dialect
from dicomrst.index.search import FindCursor, plan
from dicomrst.index.session import Session, migrate
from dicomrst.logs import logger

T = TypeVar("T")

log = logger("dicomrst.index")

#: Writes committed in one transaction at most.
MAX_BATCH = 256
#: How long `SqlIndex.start_blocking` waits for the database (PostgreSQL's own connect
#: timeout is 10 s; a migration of a large index may take longer).
START_TIMEOUT = 300.0


class IndexFailed(UpstreamError):
    """The index's database failed (502): it is down, full, or refused a statement."""


class IndexStartFailed(Exception):
    """The index cannot be opened; the message starts with ``index.url:``."""


def redacted(url: str) -> str:
    """`url` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc[-1]}"))


# -- the statements -----------------------------------------------------------------------


def _upsert(
    table: str, unique: str, values: dict[str, object], returning: bool = True
) -> tuple[str, list[object]]:
    names = list(values)
    updates = ", ".join(f"{n} = excluded.{n}" for n in names if n not in ("aet", unique))
    sql = (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
        f"ON CONFLICT (aet, {unique}) DO UPDATE SET {updates}" + (" RETURNING id" if returning else "")
    )
    return sql, list(values.values())


def _prune(session: Session, series: int, study: int) -> None:
    """Drop a series and a study no instance refers to any more."""
    session.execute(
        "DELETE FROM series WHERE id = ? AND NOT EXISTS (SELECT 1 FROM instances WHERE series = ?)",
        (series, series),
    )
    session.execute(
        "DELETE FROM studies WHERE id = ? AND NOT EXISTS (SELECT 1 FROM series WHERE study = ?)",
        (study, study),
    )


def _chunks(items: list[str], size: int = 500) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def write_adds(session: Session, records: list[IndexRecord]) -> list[str | None]:
    """Insert or replace the records, in few statements: one upsert per study and per
    series among them, the instances in one ``executemany``.  Of two records of one
    instance the later wins, as it would one after the other."""
    latest: dict[tuple[str, str], IndexRecord] = {}
    for record in records:
        latest.pop((record.aet, record.sop_instance), None)
        latest[(record.aet, record.sop_instance)] = record
    rows = {key: instance_row(record) for key, record in latest.items()}
    # Where the instances were, to drop a study or series one of them leaves empty.
    old: dict[tuple[str, str], tuple[int, int]] = {}
    old_keys: dict[tuple[str, str], str] = {}
    for aet in sorted({aet for aet, _ in latest}):
        sops = [sop for a, sop in latest if a == aet]
        for chunk in _chunks(sops):
            marks = ", ".join("?" * len(chunk))
            found = session.execute(
                "SELECT sop_uid, study, series, object_key FROM instances "
                f"WHERE aet = ? AND sop_uid IN ({marks})",
                [aet, *chunk],
            )
            for sop, study_id, series_id, key in found:
                old[(aet, sop)] = (int(study_id), int(series_id))
                old_keys[(aet, sop)] = str(key)
    studies: dict[tuple[str, str], dict[str, object]] = {}
    series: dict[tuple[str, str], tuple[str, dict[str, object]]] = {}
    for (aet, _), record in latest.items():
        row = rows[(aet, record.sop_instance)]
        studies[(aet, record.study)] = row.study
        series[(aet, record.series)] = (record.study, row.series)
    study_ids: dict[tuple[str, str], int] = {}
    for (aet, uid), values in studies.items():
        sql, params = _upsert("studies", "study_uid", {"aet": aet, **values})
        ((study_ids[(aet, uid)],),) = session.execute(sql, params)
    series_ids: dict[tuple[str, str], int] = {}
    for (aet, uid), (study_uid, values) in series.items():
        sql, params = _upsert(
            "series", "series_uid", {"aet": aet, "study": study_ids[(aet, study_uid)], **values}
        )
        ((series_ids[(aet, uid)],),) = session.execute(sql, params)
    statement = ""
    batch: list[list[object]] = []
    for (aet, sop), record in latest.items():
        row = rows[(aet, sop)]
        values = {
            "aet": aet,
            "study": study_ids[(aet, record.study)],
            "series": series_ids[(aet, record.series)],
            "transfer_syntax": record.transfer_syntax,
            "object_key": record.key,
            "stamp": record.stamp,
            "size": record.size,
            "attributes": row.attributes,
            **row.instance,
        }
        statement, params = _upsert("instances", "sop_uid", values, returning=False)
        batch.append(params)
    session.executemany(statement, batch)
    for (aet, sop), (study, series_id) in old.items():
        record = latest[(aet, sop)]
        if (study, series_id) != (study_ids[(aet, record.study)], series_ids[(aet, record.series)]):
            _prune(session, series_id, study)
    return [old_keys.get((record.aet, record.sop_instance)) for record in records]


def write_remove(session: Session, aet: str, column: str, value: str) -> bool:
    """Delete the instance whose `column` (``sop_uid`` or ``object_key``) is `value`."""
    rows = session.execute(
        f"SELECT id, study, series FROM instances WHERE aet = ? AND {column} = ?", (aet, value)
    )
    for instance, study, series in rows:
        session.execute("DELETE FROM instances WHERE id = ?", (instance,))
        _prune(session, int(series), int(study))
    return bool(rows)


@attrs.frozen
class _Add:
    record: IndexRecord


@attrs.frozen
class _Remove:
    aet: str
    column: str
    value: str

    def run(self, session: Session) -> object:
        return write_remove(session, self.aet, self.column, self.value)


_Write = _Add | _Remove


def write_batch(session: Session, writes: list[_Write]) -> list[object]:
    """Run `writes` in one transaction; their results."""
    session.begin()
    try:
        results: list[object] = []
        adds: list[IndexRecord] = []
        for write in writes:
            if isinstance(write, _Add):
                adds.append(write.record)
                continue
            if adds:  # the adds before this remove, first
                results.extend(write_adds(session, adds))
                adds = []
            results.append(write.run(session))
        if adds:
            results.extend(write_adds(session, adds))
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return results


# -- databases ----------------------------------------------------------------------------


class Database:
    """Runs functions of a `Session` in the database's threads."""

    dialect: Dialect

    def __init__(self, reactor: IReactorFromThreads, pool: Any, owns_pool: bool) -> None:
        self.reactor = reactor
        self.pool = pool
        self._owns_pool = owns_pool
        self._sessions: list[Session] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def connect(self) -> Session:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def _session(self) -> tuple[Session, bool]:
        """This thread's session, and whether it was opened just now."""
        session: Session | None = getattr(self._local, "session", None)
        if session is not None:
            return session, False
        session = self.connect()
        self._local.session = session
        with self._lock:
            self._sessions.append(session)
        return session, True

    def _drop_session(self) -> None:
        session = getattr(self._local, "session", None)
        self._local.session = None
        if session is not None:
            with self._lock:
                if session in self._sessions:
                    self._sessions.remove(session)
            try:
                session.close()
            except Exception:
                pass

    def _call(self, f: Callable[[Session], T]) -> T:
        session, fresh = self._session()
        try:
            return f(session)
        except self.broken_errors():
            self._drop_session()
            if fresh:
                raise
        # A connection kept from before (the server restarted, a proxy dropped it): once
        # more on a new one.  Every operation may run twice: writes are upserts and
        # deletes, and a transaction cut off before its commit did nothing.
        session, _ = self._session()
        try:
            return f(session)
        except self.broken_errors():
            self._drop_session()
            raise

    def broken_errors(self) -> tuple[type[BaseException], ...]:
        return ()

    def run(self, f: Callable[[Session], T]) -> Deferred[T]:
        return deferToThreadPool(self.reactor, self.pool, self._call, f)

    def start(self) -> None:
        if self._owns_pool:
            self.pool.start()

    def close(self) -> None:
        """Stop the threads (waiting for what runs) and close the connections."""
        if self._owns_pool:
            self.pool.stop()
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            try:
                session.close()
            except Exception:
                pass


class SqliteDatabase(Database):
    """An SQLite file, in one thread."""

    dialect = SQLITE

    def __init__(self, reactor: IReactorFromThreads, path: str, pool: Any = None) -> None:
        owns = pool is None
        super().__init__(reactor, pool if pool is not None else ThreadPool(1, 1, "dicomrst-index"), owns)
        self.path = path

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def connect(self) -> Session:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        # isolation_level None: autocommit, with the index's own BEGIN/COMMIT.
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
        # LIKE as C-FIND's wildcards: case-sensitive (PN is matched on a case-folded column).
        connection.execute("PRAGMA case_sensitive_like=ON")
        return Session(connection, self.dialect)

    def broken_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.DatabaseError,)


class PostgresDatabase(Database):
    """A PostgreSQL server, in a bounded pool of threads, a connection each."""

    dialect = POSTGRESQL

    def __init__(self, reactor: IReactorFromThreads, url: str, size: int = 4, pool: Any = None) -> None:
        owns = pool is None
        super().__init__(reactor, pool if pool is not None else ThreadPool(1, size, "dicomrst-index"), owns)
        self.url = url

    def describe(self) -> str:
        return redacted(self.url)

    def connect(self) -> Session:
        import psycopg

        connection = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        return Session(connection, self.dialect)

    def broken_errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.OperationalError, psycopg.InterfaceError)


# -- the index ----------------------------------------------------------------------------


def _first_error(failure: Failure) -> Failure:
    """gatherResults' FirstError unwrapped: the caller sees the write's own error."""
    error = failure.value
    if isinstance(error, FirstError):
        inner: Failure = error.subFailure
        return inner
    return failure


def _database_error(database: Database, failure: Failure) -> Failure:
    if failure.check(IndexFailed):
        return failure
    error = failure.value
    wrapped = IndexFailed(
        f"the index database ({database.describe()}) failed: {type(error).__name__}: {error}"
    )
    wrapped.__cause__ = error
    return Failure(wrapped)


@implementer(IIndex)
class SqlIndex:
    """`IIndex` on a `Database`."""

    def __init__(self, database: Database, *, max_batch: int = MAX_BATCH) -> None:
        self.database = database
        self.max_batch = max_batch
        self._pending: list[tuple[_Write, Deferred[Any]]] = []
        self._writing: Deferred[None] | None = None
        self._started = False

    # -- life ------------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        self.database.start()
        self._started = True

        def failed(failure: Failure) -> Failure:
            self.database.close()
            self._started = False
            error = failure.value
            return Failure(IndexStartFailed(f"index.url: cannot open {self.database.describe()}: {error}"))

        def opened(version: int) -> None:
            log.info(
                "index: opened {database}, schema version {version}",
                database=self.database.describe(),
                version=version,
            )

        return self.database.run(migrate).addCallbacks(opened, failed)

    def start_blocking(self, timeout: float = START_TIMEOUT) -> None:
        """`start`, waiting in the calling thread: for ``twistd``, whose services start
        before its reactor runs (a Deferred would fire only then, after the listeners
        serve).  Raises `IndexStartFailed` (naming ``index.url``)."""
        self.database.start()
        self._started = True
        done = threading.Event()
        outcome: list[tuple[bool, object]] = []

        def ended(ok: bool, result: object) -> None:
            outcome.append((ok, result))
            done.set()

        self.database.pool.callInThreadWithCallback(ended, self.database._call, migrate)
        if not done.wait(timeout):
            error: object = f"no answer within {timeout:.0f} s"
        else:
            ok, result = outcome[0]
            if ok:
                log.info(
                    "index: opened {database}, schema version {version}",
                    database=self.database.describe(),
                    version=result,
                )
                return
            error = result.value if isinstance(result, Failure) else result
        self.database.close()
        self._started = False
        raise IndexStartFailed(f"index.url: cannot open {self.database.describe()}: {error}")

    def stop(self) -> Deferred[None]:
        async def stop() -> None:
            while self._writing is not None:
                await self._writing
            if self._started:
                self._started = False
                self.database.close()

        return ensureDeferred(stop())

    # -- writes ----------------------------------------------------------------------------

    def add(self, record: IndexRecord) -> Deferred[str | None]:
        return self._write(_Add(record))

    def add_many(self, records: list[IndexRecord]) -> Deferred[list[str | None]]:
        # Queued together before the drain starts: the first transaction takes them all
        # (up to `max_batch`), not the first alone.
        added = self._write_all([_Add(record) for record in records])
        return gatherResults(added, consumeErrors=True).addErrback(_first_error)

    def remove(self, aet: str, sop_instance: str) -> Deferred[bool]:
        return self._write(_Remove(aet, "sop_uid", sop_instance))

    def remove_key(self, aet: str, key: str) -> Deferred[bool]:
        return self._write(_Remove(aet, "object_key", key))

    def _write(self, write: _Write) -> Deferred[Any]:
        return self._write_all([write])[0]

    def _write_all(self, writes: list[_Write]) -> list[Deferred[Any]]:
        done: list[Deferred[Any]] = [Deferred() for _ in writes]
        self._pending.extend(zip(writes, done, strict=True))
        if self._writing is None and writes:
            # Set before draining starts: with a database that answers at once, the
            # drain has ended (and cleared it) by the time ensureDeferred returns.
            self._writing = Deferred()
            ensureDeferred(self._drain())
        return done

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                await self._commit(batch)
        finally:
            writing, self._writing = self._writing, None
            if writing is not None:
                writing.callback(None)

    async def _commit(self, batch: list[tuple[_Write, Deferred[Any]]]) -> None:
        writes = [w for w, _ in batch]
        try:
            results = await self.database.run(lambda s: write_batch(s, writes))
        except Exception:
            failure = _database_error(self.database, Failure())
            if len(batch) == 1:
                batch[0][1].errback(failure)
                return
            log.warn(
                "index: a batch of {writes} writes failed ({error}); retrying them one by one",
                writes=len(batch),
                error=str(failure.value),
            )
            for single in batch:
                await self._commit([single])
            return
        for (_, d), result in zip(batch, results, strict=True):
            d.callback(result)

    # -- reads -----------------------------------------------------------------------------

    def find(
        self,
        aet: str,
        identifier: Dataset,
        *,
        limit: int | None,
        offset: int,
        on_result: Callable[[Dataset], None],
    ) -> Deferred[None]:
        async def find() -> None:
            cursor = FindCursor(plan(aet, identifier), limit, offset)
            while not cursor.done:
                try:
                    batch = await self.database.run(cursor.next_batch)
                except Exception:
                    _database_error(self.database, Failure()).raiseException()
                for dataset in batch:
                    on_result(dataset)

        return ensureDeferred(find())

    def stamps(self, aet: str) -> Deferred[dict[str, str]]:
        def read(session: Session) -> dict[str, str]:
            rows = session.execute("SELECT object_key, stamp FROM instances WHERE aet = ?", (aet,))
            return {str(key): str(stamp) for key, stamp in rows}

        d = self.database.run(read)
        d.addErrback(lambda f: _database_error(self.database, f))
        return d
