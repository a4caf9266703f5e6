# -*- test-case-name: tests.integration.test_index_wiring -*-
"""``python -m dicomrst.scan [--config FILE] [AET ...]``: one reconcile scan now.

Reads the configuration as ``twistd dicomrst`` does (the file, or the first-run settings
without ``--config``, with ``DICOM_RST_*`` variables over either), opens its index, and
scans the LOCAL and S3 AETs named (all of them when none is), one after the other, each
as the gateway's periodic scan does: files or objects added, changed or removed behind
the gateway's back are indexed or dropped.  It runs beside a running gateway as well as
without one (SQLite waits for the other writer; PostgreSQL is shared anyway).

Prints one line per AET and exits 0 when every scan succeeded, 1 when one failed, 2 for
a configuration error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from dicomrst.common.reactor import IGatewayReactor
from dicomrst.config import Config, ConfigError, first_run_config, load_config
from dicomrst.index.database import IndexStartFailed, SqlIndex
from dicomrst.index.scans import ScanReport


def summary(aet: str, report: ScanReport) -> str:
    """The line printed for one AET's scan."""
    line = (
        f"{aet}: {report.listed} objects, {report.added} added, {report.changed} changed, "
        f"{report.removed} removed, {report.unreadable} unreadable"
    )
    if report.misplaced:
        line += f", {report.misplaced} misplaced"
    if report.strays:
        line += f", {report.strays} outside the layout"
    if report.duplicates:
        line += f", {report.duplicates} duplicates"
    if report.left:
        line += f", {report.left} left for the next scan"
    return line + f" ({report.bytes_read} bytes read, {report.seconds:.1f} s)"


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dicomrst.scan",
        description="Run one reconcile scan of the index against LOCAL directories and S3 buckets.",
    )
    parser.add_argument("--config", "-c", help="the gateway's YAML config (default: the first-run settings)")
    parser.add_argument("aets", nargs="*", metavar="AET", help="the LOCAL or S3 AETs to scan (default: all)")
    return parser.parse_args(argv)


def _chosen(config: Config, names: Sequence[str]) -> list[str]:
    archives = [aet.aet for aet in config.aets if aet.backend in ("LOCAL", "S3")]
    for name in names:
        if name not in archives:
            raise ConfigError("aets", f"{name!r} is not a LOCAL or S3 AET of this configuration")
    return list(names) or archives


async def _scan_all(
    reactor: IGatewayReactor, config: Config, index: SqlIndex, names: list[str], out: Any
) -> int:
    from dicomrst.tap import archive_backend, scan_of

    try:
        await index.start()
    except IndexStartFailed as e:
        out.write(f"dicomrst.scan: config error: {e}\n")
        return 2
    status = 0
    try:
        for name in names:
            aet = config.aet(name)
            assert aet is not None
            backend = archive_backend(aet, reactor, index)
            try:
                report = await scan_of(backend)()
            except Exception as e:
                out.write(f"{name}: scan failed: {e}\n")
                status = 1
            else:
                out.write(summary(name, report) + "\n")
            finally:
                await backend.stop()
            out.flush()
    finally:
        await index.stop()
    return status


def main(argv: Sequence[str] | None = None, out: Any = None) -> int:
    """Run the command; its exit status."""
    out = out or sys.stdout
    args = _arguments(sys.argv[1:] if argv is None else argv)
    try:
        config = first_run_config() if args.config is None else load_config(args.config)
        names = _chosen(config, args.aets)
    except ConfigError as e:
        out.write(f"dicomrst.scan: config error: {e}\n")
        return 2
    if not names:
        out.write("dicomrst.scan: no LOCAL or S3 AET to scan in this configuration\n")
        return 2
    from twisted.internet import reactor as installed
    from twisted.internet.task import react

    from dicomrst.tap import open_configured_index

    reactor = cast(IGatewayReactor, installed)
    try:
        index = open_configured_index(config, reactor)
    except ConfigError as e:
        out.write(f"dicomrst.scan: config error: {e}\n")
        return 2
    assert index is not None  # `names` is not empty: there is a LOCAL or S3 AET
    # What the scans warn of (unreadable files, strays) goes to stderr; the summary to `out`.
    warnings = FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)])
    globalLogBeginner.beginLoggingTo([warnings], redirectStandardIO=False)
    result: list[int] = []

    def run(_: Any) -> Deferred[None]:
        d = Deferred.fromCoroutine(_scan_all(reactor, config, index, names, out))
        return d.addCallback(result.append)

    try:
        react(run)
    except SystemExit as e:
        if e.code not in (0, None):
            return 1
    return result[0] if result else 1


if __name__ == "__main__":
    sys.exit(main())
