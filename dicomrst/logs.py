# -*- test-case-name: tests.unit.test_logs -*-
"""Structured logging with one level for the whole gateway (``telemetry.level``), and
no raw network bytes in any log line.

twistd owns the global log observer, so rather than replacing it we route all of
dicomrst's loggers through one observer of ours; the level the config sets is checked
as an event is emitted, before it is built.

Every event those loggers emit passes `escape_event` on its way to the global
observer: each field (not the ``log_*`` keys Twisted sets, nor numbers) is shown with
control characters, line breaks, ANSI escapes and other non-printable characters
escaped, as are backslashes (so an escape is never ambiguous).  Paths, AE titles, part
headers and whatever else arrives from the network are logged by many modules; escaping
here, once, covers every one of them and every one added later: no client or peer can
break a log line or forge one.  With ``telemetry.format: json`` the fields pass unescaped
and `JsonLines` escapes them the JSON way instead (every control and non-ASCII character
as ``\\uXXXX``), so a JSON reader gets the text as it arrived.

**Request IDs.**  The HTTP request being served is kept in a `contextvars` variable
(`request_scope`), and every event a dicomrst logger emits while it is set carries it as
the field ``request_id``.  contextvars rather than an argument passed down: Twisted runs
each coroutine (``Deferred.fromCoroutine``, Klein's handlers, the DIMSE and S3 code they
await) in a copy of the context it was started in, resumed step by step in that copy, so
everything a request awaits sees its ID without a parameter through every layer.  What
runs in a plain callback fired by the network (a PDU arriving) runs in the reactor's
context instead; the DIMSE layer names the request there from the association it took
(`dicomrst.dimse.pool`), explicitly.

**The output.**  Under twistd, `make_output` builds the global observer itself (the
file twistd's ``--logfile`` names, or stdout): text as twistd writes it, or one JSON
object per line; Twisted's own noise (factories starting and stopping for each pooled
HTTP connection) is shown at DEBUG only; the file can be reopened (SIGHUP).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any, cast

from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    globalLogPublisher,
)
from twisted.python.logfile import LogFile
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

FORMATS = ("text", "json")

#: The ID of the HTTP request being served in this context (see the module docstring).
REQUEST_ID: ContextVar[str | None] = ContextVar("dicomrst_request_id", default=None)


@contextmanager
def request_scope(request_id: str | None) -> Iterator[None]:
    """Run the body (and every coroutine started in it) as part of request `request_id`."""
    token = REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        REQUEST_ID.reset(token)


def current_request_id() -> str | None:
    return REQUEST_ID.get()

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


class _Settings:
    format = "text"


_settings = _Settings()


@implementer(ILogObserver)
class _EscapingObserver:
    def __init__(self, downstream: ILogObserver) -> None:
        self._downstream = downstream

    def __call__(self, event: dict[str, Any]) -> None:
        if _settings.format == "json":
            # JsonLines escapes every field (and the message) as JSON does.
            self._downstream(event)
            return
        escaped = escape_event(event)
        if event.get("request_id") is not None and event.get("log_format"):
            # Text lines name their request at the end, where grep finds it.
            escaped["log_format"] = event["log_format"] + " request_id={request_id}"
        self._downstream(escaped)


class _GatewayLogger(Logger):
    """A Logger whose events carry the current request's ID (`request_scope`) and pass
    the configured level (``telemetry.level``), checked before the event is built."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        if level in _shown.hidden:
            # ~4 µs of each INFO line at WARN (the pool's line for every search) went to
            # building the event and to Twisted's level checks (which sort the levels and
            # walk the namespace), only for the filter to drop it.
            return
        if level not in _shown.levels:  # not a LogLevel: Twisted logs that
            super().emit(level, format, **kwargs)
            return
        if "request_id" not in kwargs:
            request_id = REQUEST_ID.get()
            if request_id is not None:
                kwargs["request_id"] = request_id
        # As Twisted's Logger.emit, without its level check (done above).
        kwargs.update(
            log_logger=self,
            log_level=level,
            log_namespace=self.namespace,
            log_source=self.source,
            log_format=format,
            log_time=time.time(),
        )
        if "log_trace" in kwargs:
            cast(list[Any], kwargs["log_trace"]).append((self, self.observer))
        self.observer(kwargs)


_ALL_LEVELS: tuple[LogLevel, ...] = tuple(LogLevel.iterconstants())


class _Shown:
    """The configured level, the levels shown (it and those above) and those hidden:
    sets, as ordering LogLevels walks their constants."""

    level: LogLevel = LogLevel.info
    levels: frozenset[LogLevel] = frozenset()
    hidden: frozenset[LogLevel] = frozenset()

    def set(self, level: LogLevel) -> None:
        at = _ALL_LEVELS.index(level)
        self.level = level
        self.levels = frozenset(_ALL_LEVELS[at:])
        self.hidden = frozenset(_ALL_LEVELS[:at])


_shown = _Shown()
_shown.set(LogLevel.info)
# The levels are filtered in `_GatewayLogger.emit`, the only way in.
_observer: ILogObserver = _EscapingObserver(globalLogPublisher)


def parse_level(name: str) -> LogLevel:
    """Map a DICOM-RST level name (TRACE..ERROR, any case) to a Twisted level."""
    try:
        return _LEVELS[name.upper()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}; use one of {', '.join(LEVEL_NAMES)}") from None


def set_level(name: str) -> None:
    """``telemetry.level``, for every dicomrst logger."""
    _shown.set(parse_level(name))


def set_format(name: str) -> None:
    """``telemetry.format``: ``text`` (fields escaped Python-style) or ``json`` (left to
    `JsonLines`)."""
    if name not in FORMATS:
        raise ValueError(f"unknown log format {name!r}; use one of {', '.join(FORMATS)}")
    _settings.format = name


def current_level() -> LogLevel:
    return _shown.level


def debug_enabled() -> bool:
    """DEBUG (or TRACE) lines are shown: worth gathering their fields."""
    # DEBUG is Twisted's lowest level; an identity test, since ordering LogLevels walks
    # their constants (and this is asked for every DIMSE message).
    return current_level() is LogLevel.debug


_INFO_SHOWN = (_LEVELS["DEBUG"], _LEVELS["INFO"])


def info_enabled() -> bool:
    """INFO lines are shown (INFO, DEBUG or TRACE): worth gathering their fields (the
    access line's, once per request).  A membership test: ordering LogLevels walks
    their constants."""
    return current_level() in _INFO_SHOWN


def logger(namespace: str) -> Logger:
    """A Logger for `namespace` whose events pass the configured level filter, carry the
    request ID (`request_scope`) and are escaped (`escape_event`)."""
    return _GatewayLogger(namespace=namespace, observer=_observer)


# -- the output ----------------------------------------------------------------------------

#: Twisted's lines for every connection a client pool opens and closes (treq's
#: _HTTP11ClientFactory, once per S3 connection): DEBUG, not INFO.
_NOISE = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})

#: Keys of a JSON line that are not the event's own fields.
_JSON_KEYS = ("time", "level", "namespace", "message")


def _level_of(event: dict[str, Any]) -> LogLevel:
    level = event.get("log_level")
    if level is _LEVELS["INFO"] and event.get("log_format") in _NOISE:
        return _LEVELS["DEBUG"]
    # Legacy events (log.msg) carry a level too; anything else counts as INFO.
    return cast(LogLevel, level) if level in _ALL_LEVELS else _LEVELS["INFO"]


def _json_value(value: object) -> object:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, bytes | bytearray):
        return repr(bytes(value))
    return str(value)


def _message(event: dict[str, Any]) -> str:
    text = _formatted(event)
    return formatEvent(event) if text is None else text


def json_line(event: dict[str, Any]) -> str:
    """`event` as one line of JSON with the keys time (UTC, ISO 8601), level, namespace,
    message, then the event's own fields (``request_id`` among them when set), and
    ``traceback`` for a failure.  ASCII only: controls, line separators and every other
    character a terminal could act on are ``\\uXXXX`` escapes."""
    level = _level_of(event)
    stamp = event.get("log_time")
    when = datetime.fromtimestamp(stamp if isinstance(stamp, int | float) else 0, UTC)
    out: dict[str, object] = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level.name.upper(),
        "namespace": str(event.get("log_namespace") or "-"),
        "message": _message(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _JSON_KEYS or key in ("format", "message", "isError"):
            continue
        out[key] = _json_value(value)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            out["traceback"] = failure.getTraceback()
        except Exception:
            out["traceback"] = repr(failure)
    return json.dumps(out, ensure_ascii=True, separators=(",", ":")) + "\n"


class _Stamps:
    """The last second's time stamp, as Twisted's `formatTime` writes it (local time,
    RFC 3339, to the second): its time zone look-up and strftime cost ~5 µs a line."""

    second = -1
    text = ""

    def of(self, when: object) -> str:
        if type(when) is not float and type(when) is not int:
            return formatTime(cast(float | None, when))
        if when < 0:  # int() would round towards the next second up
            return formatTime(when)
        second = int(when)
        if second != self.second:
            # Written for the whole second: a zone's offset changes on a whole second.
            self.text = formatTime(second)
            self.second = second
        return self.text


_stamps = _Stamps()


def _system(event: dict[str, Any]) -> str:
    """The ``[system]`` of a classic line: ``log_system``, else namespace#level."""
    system = event.get("log_system", None)
    if system is None:
        level = event.get("log_level", None)
        return "{namespace}#{level}".format(
            namespace=event.get("log_namespace", "-"), level="-" if level is None else level.name
        )
    try:
        return str(system)
    except Exception:
        return "UNFORMATTABLE"


def _formatted(event: dict[str, Any]) -> str | None:
    """`event`'s message as Twisted's `formatEvent` makes it, by `str.format_map` (C)
    instead of its `string.Formatter` (pure Python, ~15 µs a line); None where only
    Twisted's own formatting will do: a call in the format ("{f()}", "{a.f()}", which
    format_map cannot make), a flattened event, a format that fails (Twisted writes an
    "Unable to format event" text naming the error)."""
    fmt = event.get("log_format")
    if type(fmt) is not str or "()" in fmt or "log_flattened" in event:
        return None
    try:
        return fmt.format_map(event)
    except Exception:
        return None


def classic_text(event: dict[str, Any]) -> str | None:
    """`event` as Twisted's `formatEventAsClassicLogText` writes it (what twistd's log
    file has), the same text at about a third of its cost: `_formatted`, and a time stamp
    made once a second.  A failure's traceback is left to Twisted."""
    text = None if "log_failure" in event else _formatted(event)
    if text is None:
        return formatEventAsClassicLogText(event)
    if not text:
        return None
    line = f"{_stamps.of(event.get('log_time', None))} [{_system(event)}] {text}"
    return line.replace("\n", "\n\t") + "\n"


@implementer(ILogObserver)
class OutputLog:
    """The gateway's log output: filters Twisted's events by the configured level (with
    its noise demoted to DEBUG; dicomrst's own were filtered already), writes each as text
    or a JSON line to `stream`, and reopens a log file on request.

    :ivar stream: a `LogFile` (reopened by `reopen`) or a stream such as stdout.
    """

    def __init__(self, stream: IO[str] | LogFile, json_format: bool) -> None:
        self.stream = stream
        self.json_format = json_format

    @property
    def path(self) -> str | None:
        """The log file's path (None: a stream)."""
        return self.stream.path if isinstance(self.stream, LogFile) else None

    def __call__(self, event: dict[str, Any]) -> None:
        level = _level_of(event)
        if level not in _shown.levels:
            return
        if level is not event.get("log_level"):
            event = dict(event, log_level=level)  # demoted noise says so in its line
        text = json_line(event) if self.json_format else classic_text(event)
        if not text:
            return
        self.stream.write(text)
        self.stream.flush()

    def reopen(self) -> bool:
        """Reopen the log file (after logrotate moved it); False for a stream."""
        if isinstance(self.stream, LogFile):
            self.stream.reopen()
            return True
        return False


def make_output(logfile: str | None, nodaemon: bool, json_format: bool) -> OutputLog:
    """The output twistd's own choice would be (``--logfile``: ``-`` or none with
    ``--nodaemon`` is stdout, else the file, ``twistd.log`` by default)."""
    if logfile == "-" or (nodaemon and not logfile):
        return OutputLog(sys.stdout, json_format)
    return OutputLog(LogFile.fromFullPath(logfile or "twistd.log"), json_format)
