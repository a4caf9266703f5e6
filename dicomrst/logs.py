# -*- test-case-name: tests.unit.test_logs -*-
"""Structured logging with one level for the whole gateway (``telemetry.level``), and
no raw network bytes in any log line.

twistd owns the global log observer, so rather than replacing it we route all of
dicomrst's loggers through one filtering observer whose level the config sets.

Every event those loggers emit passes `escape_event` on its way to the global
observer: each field (not the ``log_*`` keys Twisted sets, nor numbers) is shown with
control characters, line breaks, ANSI escapes and other non-printable characters
escaped, as are backslashes (so an escape is never ambiguous).  Paths, AE titles, part
headers and whatever else arrives from the network are logged by many modules; escaping
here, once, covers every one of them and every one added later: no client or peer can
break a log line or forge one.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from zope.interface import implementer

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

_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """`text` with every character that is not printable (C0 and C1 controls, DEL, ESC,
    line and paragraph separators, format characters such as bidirectional overrides,
    lone surrogates, unassigned code points) escaped Python-style, and backslashes
    doubled; printable text, non-ASCII letters included, is kept as it is."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for char in text:
        named = _NAMED_ESCAPES.get(char)
        if named is not None:
            out.append(named)
        elif char.isprintable():
            out.append(char)
        else:
            code = ord(char)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            else:
                out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


class _Escaped:
    """An object logged as a field (an exception, an address, a list): formatted as the
    object itself would be, then escaped."""

    __slots__ = ("_value",)

    def __init__(self, value: object) -> None:
        self._value = value

    def __format__(self, spec: str) -> str:
        return escape(format(self._value, spec))

    def __str__(self) -> str:
        return escape(str(self._value))

    def __repr__(self) -> str:
        return escape(repr(self._value))

    def __getattr__(self, name: str) -> _Escaped:
        # "{error.message}" in a format: the attribute, escaped in turn.
        return _Escaped(getattr(self._value, name))

    def __getitem__(self, key: Any) -> _Escaped:
        # "{error.args[0]}": the item, escaped in turn.
        return _Escaped(self._value[key])  # type: ignore[index]  # as the format asks


_UNCHANGED = (int, float, type(None))  # bool is an int; their text is digits and signs


def _escape_value(value: object) -> object:
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, _UNCHANGED):
        return value
    # bytes print as their repr, which escapes them already; anything else is wrapped.
    return value if isinstance(value, bytes | bytearray) else _Escaped(value)


def escape_event(event: dict[str, Any]) -> dict[str, Any]:
    """A copy of `event` whose fields are escaped (see the module docstring).  The
    ``log_*`` keys are Twisted's (the format string is ours, written in the code)."""
    return {
        key: value if key.startswith("log_") else _escape_value(value) for key, value in event.items()
    }


@implementer(ILogObserver)
class _EscapingObserver:
    def __init__(self, downstream: ILogObserver) -> None:
        self._downstream = downstream

    def __call__(self, event: dict[str, Any]) -> None:
        self._downstream(escape_event(event))


_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer: ILogObserver = FilteringLogObserver(_EscapingObserver(globalLogPublisher), [_predicate])


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
    """A Logger for `namespace` whose events pass the configured level filter and are
    escaped (`escape_event`)."""
    return Logger(namespace=namespace, observer=_observer)
