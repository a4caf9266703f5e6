# -*- test-case-name: tests.unit.test_index -*-
"""The index that ``index.url`` names, for the tap to start."""

from __future__ import annotations

from dicomrst.common.reactor import IGatewayReactor
from dicomrst.config import ConfigError, IndexConfig
from dicomrst.index.database import PostgresDatabase, SqlIndex, SqliteDatabase
from dicomrst.index.interfaces import IIndex

#: Connections (and threads) to a PostgreSQL index at most.
POSTGRES_CONNECTIONS = 4


def open_index(config: IndexConfig, reactor: IGatewayReactor) -> IIndex:
    """An `IIndex` on the database of ``index.url``, not started yet (`IIndex.start` opens
    and migrates it).  Raises `ConfigError` naming ``index.url`` when the URL needs a
    driver that is missing."""
    url = config.url
    if url.startswith("sqlite:"):
        return SqlIndex(SqliteDatabase(reactor, url[len("sqlite:") :]))
    try:
        import psycopg  # noqa: F401  (a plain install has it; say so if not)
    except ImportError as e:
        needs = "a PostgreSQL index needs psycopg 3 (pip install 'psycopg[binary]')"
        raise ConfigError("index.url", f"{needs}: {e}") from None
    return SqlIndex(PostgresDatabase(reactor, url, POSTGRES_CONNECTIONS))
