"""Structured logging with one level for the whole gateway (``telemetry.level``).

twistd owns the global log observer, so rather than replacing it we route all of
dicomrst's loggers through one filtering observer whose level the config sets.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

# LogLevel.* are constantly NamedConstants, which mypy sees as Any (constantly is untyped).
_LEVELS: dict[str, LogLevel] = {
    "TRACE": LogLevel.debug,
    "DEBUG": LogLevel.debug,
    "INFO": LogLevel.info,
    "WARN": LogLevel.warn,
    "WARNING": LogLevel.warn,
    "ERROR": LogLevel.error,
}

LEVEL_NAMES = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer: ILogObserver = FilteringLogObserver(globalLogPublisher, [_predicate])


def parse_level(name: str) -> LogLevel:
    """Map a DICOM-RST level name (TRACE..ERROR, any case) to a Twisted level."""
    try:
        return _LEVELS[name.upper()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}; use one of {', '.join(LEVEL_NAMES)}") from None


def set_level(name: str) -> None:
    # "" is the default namespace (as None was: Twisted treats any false namespace as "").
    _predicate.setLogLevelForNamespace("", parse_level(name))


def logger(namespace: str) -> Logger:
    """A Logger for `namespace` whose events pass the configured level filter."""
    return Logger(namespace=namespace, observer=_observer)
