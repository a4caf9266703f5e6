"""Configuration: DICOM-RST's YAML keys read into frozen, typed attrs objects.

A DICOM-RST ``config.yaml`` loads unchanged. The attrs classes below are the schema:
each field carries the check that validates and converts its YAML value (plus an
optional alias and the backend it belongs to), its YAML key is the field name in
kebab-case, and its attrs default is the DICOM-RST default. `_build` is the one walker
over that schema; the few rules that span fields (unique AE titles, WADO receivers,
host names that resolve) run afterwards in `parse_config`.

Every problem raises `ConfigError` naming the full key path, e.g. ``aets[1].port``.
Times are integer milliseconds, as in DICOM-RST's files; ``*_s`` properties give seconds.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import socket
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import yaml

from dicomrst.common.addresses import parse_network
from dicomrst.logs import parse_level

__all__ = [
    "AccessConfig",
    "AetConfig",
    "AuditConfig",
    "AuthConfig",
    "BasicAuthConfig",
    "CacheConfig",
    "ClientTlsConfig",
    "Config",
    "ConfigError",
    "CorsConfig",
    "DimseServerConfig",
    "HttpConfig",
    "IndexConfig",
    "MetricsConfig",
    "MwlConfig",
    "OidcConfig",
    "PoolConfig",
    "QidoConfig",
    "S3Credentials",
    "SenderConfig",
    "ServerConfig",
    "ServerTlsConfig",
    "StowConfig",
    "TelemetryConfig",
    "WadoConfig",
    "config_warnings",
    "default_resolver",
    "first_run_config",
    "first_run_data",
    "load_config",
    "parse_config",
]


class ConfigError(Exception):
    """The configuration is unusable; ``str()`` is ``"<key path>: <what is wrong>"``.

    For file-level problems (unreadable file, YAML syntax) ``path`` is the file name,
    with ``:line:column`` when known. `load_config` sets ``file`` on every error.
    """

    def __init__(self, path: str, message: str, *, file: str | None = None,
                 line: int | None = None) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message
        self.file = file
        self.line = line

    def __str__(self) -> str:
        return f"{self.path or 'top level'}: {self.message}"


# -- checks: (yaml value, key path, environment) -> converted value, or ConfigError -----

_Env = Mapping[str, str]
_T = TypeVar("_T")
_A = TypeVar("_A", bound=attrs.AttrsInstance)  # a schema class
_Check = Callable[[Any, str, _Env], _T]


def _show(value: object) -> str:
    """A value as the user wrote it in YAML, short enough for one error line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _string(*, empty: bool = False, secret: bool = False) -> _Check[str]:
    def check(value: Any, path: str, env: _Env) -> str:
        if not isinstance(value, str):
            # A mistyped secret (e.g. all digits, so YAML made it an int) must not be echoed.
            got = "another type" if secret else _show(value)
            raise ConfigError(path, f"expected a string, got {got}")
        if not empty and not value.strip():
            raise ConfigError(path, "must not be empty")
        return value

    return check


def _integer(lo: int = 0, hi: int | None = None) -> _Check[int]:
    def check(value: Any, path: str, env: _Env) -> int:
        # YAML's true/false arrive as Python bools, which are ints; a port of `true` is a typo.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {_show(value)}")
        if value < lo or (hi is not None and value > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise ConfigError(path, f"must be {bounds}, got {value}")
        return value

    return check


def _boolean(value: Any, path: str, env: _Env) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"expected true or false, got {_show(value)}")
    return value


def _choice(*choices: str) -> _Check[str]:
    """Case-insensitive, as DICOM-RST accepts ``backend: dimse``; yields the canonical spelling."""
    canonical = {c.casefold(): c for c in choices}

    def check(value: Any, path: str, env: _Env) -> str:
        if isinstance(value, str) and value.casefold() in canonical:
            return canonical[value.casefold()]
        raise ConfigError(path, f"expected one of {', '.join(choices)}, got {_show(value)}")

    return check


def _optional(check: _Check[_T]) -> _Check[_T | None]:
    return lambda value, path, env: None if value is None else check(value, path, env)


#: The shape of the checks whose value is not a scalar: the schema class of the mapping
#: they take (None: scalars), and whether they take a list of them.  What the
#: environment overrides walk (`_resolve`); `_build` needs only the checks themselves.
_SHAPES: dict[Callable[..., Any], tuple[type | None, bool]] = {}


def _list_of(item: _Check[_T]) -> _Check[tuple[_T, ...]]:
    def check(value: Any, path: str, env: _Env) -> tuple[_T, ...]:
        if value is None:  # a key whose entries are all commented out
            return ()
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, got {_show(value)}")
        return tuple(item(v, f"{path}[{i}]", env) for i, v in enumerate(value))

    _SHAPES[check] = (_SHAPES.get(item, (None, False))[0], True)
    return check


def _section(cls: type[_A]) -> _Check[_A]:
    """A mapping under a key; null there (every sub-key commented out) means all defaults."""

    def check(value: Any, path: str, env: _Env) -> _A:
        return _build(cls, {} if value is None else value, path, env)

    _SHAPES[check] = (cls, False)
    return check


def _entry(cls: type[_A]) -> _Check[_A]:
    """A mapping as a list entry; null there (a bare ``-``) is a mistake, which `_build` reports."""

    def check(value: Any, path: str, env: _Env) -> _A:
        return _build(cls, value, path, env)

    _SHAPES[check] = (cls, False)
    return check


def _ae_title(value: Any, path: str, env: _Env) -> str:
    """An AE title per the PS3.5 AE value representation."""
    if not isinstance(value, str):
        raise ConfigError(path, f"expected an AE title (a string), got {_show(value)}")
    # Leading and trailing spaces are not significant in AE (PS3.5 6.2), so "ORTHANC "
    # is the same AE as "ORTHANC" for duplicate checks and URL paths alike.
    title = value.strip(" ")
    if not title:
        problem = "must not be empty or all spaces"
    elif len(title) > 16:
        problem = "is longer than 16 characters"
    elif "\\" in title:
        problem = "must not contain a backslash"
    elif any(c < " " or c == "\x7f" for c in title):
        problem = "must not contain control characters"
    elif not title.isascii():
        problem = "must contain only ASCII characters"
    else:
        return title
    raise ConfigError(path, f"invalid AE title {value!r}: {problem}")


# RFC 3986 pchar without pct-encoded: what a path segment holds as it is.
_URL_SEGMENT_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@"
)


def _url_ae_title(value: Any, path: str, env: _Env) -> str:
    """An AE title that is also the URL segment ``/aets/{aet}``: no space, ``/``, ``?``,
    ``#``, ``%`` or other character a URL path cannot hold as it is."""
    title = _ae_title(value, path, env)
    bad = sorted({c for c in title if c not in _URL_SEGMENT_CHARS})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise ConfigError(path, f"invalid AE title {value!r}: it is the URL segment /aets/{{aet}}, "
                                f"which cannot hold {shown}")
    return title


def _level(value: Any, path: str, env: _Env) -> str:
    name = _string()(value, path, env)
    try:
        parse_level(name)
    except ValueError as e:
        raise ConfigError(path, str(e)) from None
    return name.upper()


def _base_path(value: Any, path: str, env: _Env) -> str:
    text = _string(empty=True)(value, path, env)
    if any(c.isspace() or c in "?#" for c in text):
        raise ConfigError(path, f"must be a URL path without spaces, '?' or '#', got {text!r}")
    return "/" + text.strip("/")


def _public_url(value: Any, path: str, env: _Env) -> str:
    """``server.http.public-url``: an http(s) URL without query or fragment; kept without
    a trailing slash, since ``/aets/...`` is appended to it."""
    text = _url(value, path, env)
    parts = urlsplit(text)
    if parts.query or parts.fragment or parts.username is not None or text.endswith("?"):
        raise ConfigError(path, f"expected a URL without user, query or fragment, got {text!r}")
    return text.rstrip("/")


def _network(value: Any, path: str, env: _Env) -> str:
    """An IP address or CIDR network (``10.0.0.0/8``, ``::1``), normalised."""
    text = _string()(value, path, env)
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise ConfigError(path, f"expected an IP address or a network (10.0.0.0/8), got {text!r}") from None


def _url(value: Any, path: str, env: _Env) -> str:
    text = _string()(value, path, env)
    try:
        parts = urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises ValueError for a port like :99999 or :abc
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(path, f"expected an http:// or https:// URL, got {text!r}")
    return text


_PORT = _integer(1, 65535)
_MS = _integer(0)  # a duration in milliseconds
_BACKEND = _choice("DIMSE", "S3", "LOCAL")


def _key(check: _Check[Any], default: Any = attrs.NOTHING, *, factory: Callable[[], Any] | None = None,
         alias: str | None = None, backend: str | None = None, required: bool = False,
         secret: bool = False) -> Any:
    """An attrs field that is also a schema entry for `_build`.

    ``backend`` restricts the key to AETs of that backend; ``required`` makes it
    mandatory there even though the attrs default (None) lets other backends omit it.
    """
    return attrs.field(
        default=attrs.Factory(factory) if factory is not None else default,
        repr=not secret,
        metadata={"check": check, "alias": alias, "backend": backend, "required": required},
    )


def _build(cls: type[_A], value: Any, path: str, env: _Env, backend: str | None = None) -> _A:
    """Validate mapping `value` against the schema metadata of `cls`'s fields and build one."""
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected a mapping, got {_show(value)}")
    fields = attrs.fields(cls)
    by_key = {f.name.replace("_", "-"): f for f in fields}
    by_key.update({f.metadata["alias"]: f for f in fields if f.metadata["alias"]})

    kwargs: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, raw in value.items():
        key_path = _join(path, _show(key) if not isinstance(key, str) else key)
        field = by_key.get(key) if isinstance(key, str) else None
        if field is None:
            raise ConfigError(key_path, "unknown key")
        owner = field.metadata["backend"]
        if owner not in (None, backend):
            raise ConfigError(key_path, f"unknown key for backend {backend} (a {owner} key)")
        if field.name in spelled:  # both `interface` and its alias `host`
            raise ConfigError(key_path, f"same setting as {spelled[field.name]!r}; give only one")
        spelled[field.name] = key
        kwargs[field.name] = field.metadata["check"](raw, key_path, env)

    for field in fields:
        owner = field.metadata["backend"]
        required = field.default is attrs.NOTHING or (
            field.metadata["required"] and owner in (None, backend))
        if required and field.name not in kwargs:
            where = f" for backend {backend}" if owner else ""
            raise ConfigError(_join(path, field.name.replace("_", "-")),
                              f"missing required key{where}")
    return cls(**kwargs)


# -- the schema ---------------------------------------------------------------------------


def _tcp_endpoint(port: int, interface: str) -> str:
    # Twisted endpoint strings use ':' as separator, so IPv6 addresses need it escaped.
    escaped = interface.replace(":", "\\:")
    return f"tcp:{port}:interface={escaped}"


class _Timed:
    __slots__ = ()
    timeout: int

    @property
    def timeout_s(self) -> float:
        return self.timeout / 1000


def _audit_endpoint(value: Any, path: str, env: _Env) -> str:
    text = _string()(value, path, env).strip()
    if text.startswith("file:"):
        if not text[len("file:") :].strip():
            raise ConfigError(path, "file: needs a path (file:/var/log/dicomrst/audit.log)")
        return text
    kind = text.split(":", 1)[0]
    if ":" not in text or not kind.isidentifier():
        raise ConfigError(
            path, f"expected file:PATH or a client endpoint (tcp:HOST:PORT, tls:HOST:PORT), got {text!r}"
        )
    return text  # the endpoint itself is checked where the trail is built


def _header_text(limit: int) -> _Check[str]:
    # RFC 5424 header fields: printable ASCII without spaces.
    def check(value: Any, path: str, env: _Env) -> str:
        text = _string()(value, path, env)
        if len(text) > limit or any(not 33 <= ord(c) <= 126 for c in text):
            raise ConfigError(
                path, f"expected at most {limit} printable ASCII characters without spaces, got {text!r}"
            )
        return text

    return check


@attrs.frozen
class AuditConfig:
    """Not in DICOM-RST: ``telemetry.audit``, the audit trail (``dicomrst.audit``)."""

    # tcp:HOST:PORT, tls:HOST:PORT (RFC 5425) or any Twisted client endpoint; file:PATH.
    endpoint: str = _key(_audit_endpoint)
    # xml: the DICOM audit message (IHE ATNA); json: one JSON object.
    format: str = _key(_choice("xml", "json"), "xml")
    queue_size: int = _key(_integer(1, 10_000_000), 10_000)
    app_name: str = _key(_header_text(48), "dicomrst")
    hostname: str | None = _key(_optional(_header_text(255)), None)  # None: the machine's name
    site_id: str | None = _key(_optional(_string()), None)  # AuditEnterpriseSiteID

    @property
    def file_path(self) -> str | None:
        """The file records are appended to, None when they go to a collector."""
        return self.endpoint[len("file:") :].strip() if self.endpoint.startswith("file:") else None


@attrs.frozen
class MetricsConfig:
    """Not in DICOM-RST: Prometheus metrics (``dicomrst.common.metrics``) on a listener of
    their own, ``/metrics``; off unless `endpoint` is given."""

    # A Twisted endpoint string (tcp:9464:interface=127.0.0.1); None: no metrics.
    endpoint: str | None = _key(_optional(_string()), None)


@attrs.frozen
class TelemetryConfig:
    sentry: str | None = _key(_optional(_string()), None)  # accepted for DICOM-RST; unused
    level: str = _key(_level, "INFO")
    # Not in DICOM-RST: "json" writes one JSON object per line (dicomrst.logs.JsonLines).
    format: str = _key(_choice("text", "json"), "text")
    metrics: MetricsConfig = _key(_section(MetricsConfig), factory=MetricsConfig)  # not in DICOM-RST
    # Not in DICOM-RST: the audit trail; off when left out.
    audit: AuditConfig | None = _key(_entry(AuditConfig), None)


def _origin(value: Any, path: str, env: _Env) -> str:
    """A browser origin, ``scheme://host[:port]`` (RFC 6454 serialization), lower case."""
    text = _string()(value, path, env)
    try:
        parts = urlsplit(text)
        ok = (parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.path
              and not parts.query and not parts.fragment and parts.username is None)
        _ = parts.port
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(path, f"expected an origin like https://viewer.example.org[:port], got {text!r}")
    return text.lower()


def _allowed_origins(value: Any, path: str, env: _Env) -> tuple[str, ...] | None:
    """``*`` (any origin: None), or a list of origins."""
    if value == "*" or value == ["*"]:
        return None
    if isinstance(value, list) and "*" in value:
        raise ConfigError(path, "'*' stands alone: give '*' or a list of origins")
    return _list_of(_origin)(value, path, env)


@attrs.frozen
class CorsConfig:
    """Not in DICOM-RST: which browser origins may read responses (``server.http.cors``)."""

    # None: any ("*", as before); a tuple: only these origins (lower case).
    allowed_origins: tuple[str, ...] | None = _key(_allowed_origins, None)


@attrs.frozen
class ServerTlsConfig:
    """Not in DICOM-RST: ``server.http.tls``, ``server.dimse[].tls``: serve TLS with `cert`
    (PEM: the certificate, then any intermediates) and `key`; with `ca`, ask clients for a
    certificate and verify it against `ca`, and turn away those without one unless
    `require-client-cert` is false.  The files are read at start
    (`dicomrst.common.tls.server_tls`)."""

    cert: str = _key(_string())
    key: str = _key(_string())
    ca: str | None = _key(_optional(_string()), None)
    # None: true when `ca` is given.
    require_client_cert: bool | None = _key(_optional(_boolean), None)

    @property
    def client_cert_required(self) -> bool:
        return self.ca is not None and self.require_client_cert is not False


@attrs.frozen
class ClientTlsConfig:
    """Not in DICOM-RST: ``aets[].tls``: DICOM TLS (PS3.15 Annex B) to this PACS, whose
    certificate must chain to `ca` and, with `check-hostname`, name ``aets[].host``;
    `cert` and `key` are presented as our client certificate when given."""

    ca: str = _key(_string())
    cert: str | None = _key(_optional(_string()), None)
    key: str | None = _key(_optional(_string()), None)
    check_hostname: bool = _key(_boolean, True)


def _check_tls(tls: ServerTlsConfig | ClientTlsConfig | None, path: str,
               endpoint: str | None = None) -> None:
    if tls is None:
        return
    if isinstance(tls, ServerTlsConfig):
        if tls.require_client_cert and tls.ca is None:
            raise ConfigError(f"{path}.require-client-cert",
                              "needs ca, the CA that client certificates are verified against")
        if endpoint is not None and endpoint.split(":", 1)[0].strip().lower() == "ssl":
            raise ConfigError(f"{path}",
                              "the endpoint is an ssl: one already; give TLS either there or here, not both")
        return
    for given, missing in (("cert", "key"), ("key", "cert")):
        if getattr(tls, given) is not None and getattr(tls, missing) is None:
            raise ConfigError(f"{path}.{missing}", f"missing ({given} is given; both are needed)")


@attrs.frozen
class HttpConfig:
    interface: str = _key(_string(), "0.0.0.0", alias="host")  # DICOM-RST's docs say `host`
    port: int = _key(_PORT, 8080)
    max_upload_size: int = _key(_integer(0), 50_000_000)  # bytes
    # Milliseconds, as DICOM-RST documents it (its code reads seconds, a bug we don't copy).
    request_timeout: int = _key(_MS, 60_000)
    graceful_shutdown: bool = _key(_boolean, True)
    base_path: str = _key(_base_path, "/")
    endpoint: str | None = _key(_optional(_string()), None)  # checked where the site is built
    # Not in DICOM-RST: the most a request's line and headers may take, counted from when
    # the connection is ready for it (so it also bounds an idle keep-alive connection).
    header_timeout: int = _key(_integer(1), 20_000)
    cors: CorsConfig = _key(_section(CorsConfig), factory=CorsConfig)  # not in DICOM-RST
    # Not in DICOM-RST: the URL clients reach the gateway's base path at, as written into
    # RetrieveURL, BulkDataURI, Content-Location (Orthanc's PublicRoot); None: from the request.
    public_url: str | None = _key(_optional(_public_url), None)
    # Not in DICOM-RST: peers whose Forwarded / X-Forwarded-* headers are believed.
    trusted_proxies: tuple[str, ...] = _key(_list_of(_network), ())
    # Not in DICOM-RST: HTTPS, with client certificates if wanted (an ssl: endpoint
    # string cannot ask for those).
    tls: ServerTlsConfig | None = _key(_entry(ServerTlsConfig), None)

    @property
    def request_timeout_s(self) -> float:
        return self.request_timeout / 1000

    @property
    def header_timeout_s(self) -> float:
        return self.header_timeout / 1000

    def endpoint_description(self) -> str:
        return self.endpoint or _tcp_endpoint(self.port, self.interface)


@attrs.frozen
class DimseServerConfig:
    aet: str = _key(_ae_title, "DICOM-RST")
    interface: str = _key(_string(), "0.0.0.0", alias="host")
    port: int = _key(_PORT, 7001)
    uncompressed: bool = _key(_boolean, True)
    endpoint: str | None = _key(_optional(_string()), None)
    # Not in DICOM-RST: an association whose peer sends no whole PDU for this long, while
    # it is the peer's turn, is aborted (a silent or trickling peer holds it otherwise).
    idle_timeout: int = _key(_integer(1), 60_000)
    # Not in DICOM-RST: a Storage SCP into this AET (a LOCAL or S3 one) instead of a C-MOVE
    # destination, so that modalities and storescu can push into the archive.
    store_to: str | None = _key(_optional(_ae_title), None)
    # Not in DICOM-RST: the calling AE titles that may associate with this listener
    # (empty: any).
    allowed_callers: tuple[str, ...] = _key(_list_of(_ae_title), factory=tuple)
    # Not in DICOM-RST: DICOM TLS on this listener (PS3.15 Annex B).
    tls: ServerTlsConfig | None = _key(_entry(ServerTlsConfig), None)

    @property
    def idle_timeout_s(self) -> float:
        return self.idle_timeout / 1000

    def endpoint_description(self) -> str:
        return self.endpoint or _tcp_endpoint(self.port, self.interface)


def default_cache_path() -> str:
    """``server.cache.path`` when not given: per user, so two users' gateways on one host
    do not fight over one directory in a shared temporary directory."""
    return os.path.join(tempfile.gettempdir(), f"dicomrst-cache-{os.geteuid()}")


@attrs.frozen
class CacheConfig:
    """Not in DICOM-RST: the on-disk instance cache (``dicomrst.cache``)."""

    # The directory, emptied at every start; None: `default_cache_path()`.
    path: str | None = _key(_optional(_string()), None)
    max_size: int = _key(_integer(0), 2_000_000_000)  # bytes on disk; 0 turns the cache off
    ttl: int = _key(_MS, 300_000)  # an entry is not served once this old

    @property
    def ttl_s(self) -> float:
        return self.ttl / 1000

    def directory(self) -> str:
        return self.path if self.path is not None else default_cache_path()


def _dotted_path(value: Any, path: str, env: _Env) -> str:
    text = _string()(value, path, env)
    if any(not part for part in text.split(".")):
        raise ConfigError(path, f"expected a dotted path of claim names (realm_access.roles), got {text!r}")
    return text


def _realm(value: Any, path: str, env: _Env) -> str:
    text = _string()(value, path, env)
    if not text.isascii() or not text.isprintable() or '"' in text or "\\" in text:
        raise ConfigError(path, "must be printable ASCII without quotes or backslashes")
    return text


@attrs.frozen
class BasicAuthConfig:
    """``server.auth.basic``: HTTP Basic against an ``htpasswd -B`` file."""

    users_file: str = _key(_string())  # checked (readable) where the gateway is built


@attrs.frozen
class OidcConfig:
    """``server.auth.oidc``: bearer JWTs from an OpenID Connect provider."""

    issuer: str = _key(_string())
    audience: str = _key(_string())
    jwks_url: str | None = _key(_url, None)
    jwks_file: str | None = _key(_string(), None)
    roles_claim: str = _key(_dotted_path, "roles")
    username_claim: str = _key(_dotted_path, "sub")  # the user name access lists match


@attrs.frozen
class AuthConfig:
    """Not in DICOM-RST: ``server.auth``."""

    basic: BasicAuthConfig | None = _key(_entry(BasicAuthConfig), None)
    oidc: OidcConfig | None = _key(_entry(OidcConfig), None)
    # None: let requests without credentials in only when no method is configured.
    anonymous: bool | None = _key(_optional(_boolean), None)
    realm: str = _key(_realm, "dicomrst")

    @property
    def configured(self) -> bool:
        return self.basic is not None or self.oidc is not None

    @property
    def anonymous_allowed(self) -> bool:
        return self.anonymous if self.anonymous is not None else not self.configured


@attrs.frozen
class ServerConfig:
    aet: str = _key(_ae_title, "DICOM-RST")  # our calling AE title towards PACS
    http: HttpConfig = _key(_section(HttpConfig), factory=HttpConfig)
    dimse: tuple[DimseServerConfig, ...] = _key(
        _list_of(_entry(DimseServerConfig)), factory=lambda: (DimseServerConfig(),))
    cache: CacheConfig = _key(_section(CacheConfig), factory=CacheConfig)
    auth: AuthConfig = _key(_section(AuthConfig), factory=AuthConfig)


@attrs.frozen
class PoolConfig(_Timed):
    size: int = _key(_integer(1), 16)
    timeout: int = _key(_MS, 10_000)  # waiting for a free association
    idle_timeout: int = _key(_MS, 60_000)  # not in DICOM-RST: release idle associations
    # Not in DICOM-RST: associations kept idle at most (each holds a PACS worker thread).
    max_idle: int = _key(_integer(0), 2)

    @property
    def idle_timeout_s(self) -> float:
        return self.idle_timeout / 1000


@attrs.frozen
class QidoConfig(_Timed):
    timeout: int = _key(_MS, 30_000)


@attrs.frozen
class SenderConfig:
    """A ``wado-rs.senders[]`` entry: a node that delivers this PACS's C-MOVE sub-operations.
    What is left out is the PACS's own (its ``aet``, its ``host``)."""

    aet: str | None = _key(_optional(_ae_title), None)  # the calling AE title it uses
    host: str | None = _key(_optional(_string()), None)  # a host name, an address, or a CIDR network


@attrs.frozen
class WadoConfig(_Timed):
    timeout: int = _key(_MS, 60_000)
    mode: str = _key(_choice("concurrent", "sequential"), "concurrent")
    # AE titles of our own server.dimse listeners that C-MOVE may send to
    receivers: tuple[str, ...] = _key(_list_of(_ae_title), factory=tuple)
    retrieve: str = _key(_choice("move", "get"), "move")  # not in DICOM-RST: C-MOVE or C-GET
    # Not in DICOM-RST: who may deliver the sub-operations of this PACS's C-MOVEs to our
    # listeners (empty: the PACS itself, from its host with its AE title).
    senders: tuple[SenderConfig, ...] = _key(_list_of(_entry(SenderConfig)), factory=tuple)


@attrs.frozen
class StowConfig(_Timed):
    timeout: int = _key(_MS, 30_000)


@attrs.frozen
class MwlConfig(_Timed):
    timeout: int = _key(_MS, 30_000)  # wait for each MWL C-FIND response (MWL-RS)


@attrs.frozen
class S3Credentials:
    """Resolved S3 credentials. ``source`` is "static", "env" or "chain" (the SDK's default chain)."""

    source: str
    access_key: str | None = None
    secret_key: str | None = attrs.field(default=None, repr=False)
    access_key_env: str | None = None  # the variable names, for messages; values are above
    secret_key_env: str | None = None


@attrs.frozen
class _CredentialKeys:
    """The ``credentials`` mapping as written, before choosing its form."""

    access_key: str | None = _key(_optional(_string()), None)
    secret_key: str | None = _key(_optional(_string(secret=True)), None, secret=True)
    access_key_env: str | None = _key(_optional(_string()), None)
    secret_key_env: str | None = _key(_optional(_string()), None)
    chain: bool = _key(_boolean, False)


_CREDENTIAL_FORMS = ("access-key/secret-key", "access-key-env/secret-key-env", "chain: true")


def _credentials(value: Any, path: str, env: _Env) -> S3Credentials | None:
    if value is None:
        return None  # anonymous, same as leaving `credentials` out
    keys = _build(_CredentialKeys, value, path, env)
    pairs = {
        "static": (("access-key", keys.access_key), ("secret-key", keys.secret_key)),
        "env": (("access-key-env", keys.access_key_env), ("secret-key-env", keys.secret_key_env)),
    }
    forms = [form for form, pair in pairs.items() if any(v is not None for _, v in pair)]
    forms += ["chain"] if keys.chain else []
    if len(forms) != 1:
        given = "none" if not forms else "more than one"
        raise ConfigError(path, f"give exactly one of {', '.join(_CREDENTIAL_FORMS)} "
                                f"(got {given}; leave out `credentials` for anonymous access)")
    form = forms[0]
    if form == "chain":
        return S3Credentials(source="chain")
    (first, a), (second, b) = pairs[form]
    if a is None or b is None:
        missing, present = (first, second) if a is None else (second, first)
        raise ConfigError(_join(path, missing), f"missing ({present} is given; both are needed)")
    if form == "static":
        return S3Credentials(source="static", access_key=a, secret_key=b)
    values = []
    # form is "env": these are the pairs["env"] entries, with a and b now known to be set.
    for key, name in ((first, a), (second, b)):
        found = env.get(name)
        if not found:
            state = "not set" if found is None else "empty"
            raise ConfigError(_join(path, key), f"environment variable {name!r} is {state}")
        values.append(found)
    return S3Credentials(source="env", access_key=values[0], secret_key=values[1],
                         access_key_env=a, secret_key_env=b)


def _access_entry(value: Any, path: str, env: _Env) -> str:
    text = _string()(value, path, env)
    if text.startswith("role:") and not text[len("role:"):].strip():
        raise ConfigError(path, "'role:' needs a role name")
    return text


@attrs.frozen
class AccessConfig:
    """Not in DICOM-RST: ``aets[].access``; a list left out admits every admitted caller,
    an empty (or null) one nobody."""

    read: tuple[str, ...] | None = _key(_list_of(_access_entry), None)
    write: tuple[str, ...] | None = _key(_list_of(_access_entry), None)


@attrs.frozen
class AetConfig:
    """One ``aets[]`` entry: a PACS reached over DIMSE, an S3 bucket, or a LOCAL directory.

    Fields mirror the YAML keys. Keys of another backend are rejected, so for an S3
    AET the DIMSE fields keep their defaults (``host``/``port`` None) and vice versa.
    """

    aet: str = _key(_url_ae_title)  # also the URL segment /aets/{aet}
    backend: str = _key(_BACKEND, "DIMSE")
    cache: bool = _key(_boolean, True)  # not in DICOM-RST: false keeps its instances out of server.cache
    access: AccessConfig | None = _key(_entry(AccessConfig), None)  # not in DICOM-RST
    # backend: DIMSE
    host: str | None = _key(_string(), None, backend="DIMSE", required=True)
    port: int | None = _key(_PORT, None, backend="DIMSE", required=True)
    pool: PoolConfig = _key(_section(PoolConfig), factory=PoolConfig, backend="DIMSE")
    qido_rs: QidoConfig = _key(_section(QidoConfig), factory=QidoConfig, backend="DIMSE")
    wado_rs: WadoConfig = _key(_section(WadoConfig), factory=WadoConfig, backend="DIMSE")
    stow_rs: StowConfig = _key(_section(StowConfig), factory=StowConfig, backend="DIMSE")
    mwl_rs: MwlConfig = _key(_section(MwlConfig), factory=MwlConfig, backend="DIMSE")
    tls: ClientTlsConfig | None = _key(_entry(ClientTlsConfig), None, backend="DIMSE")  # not in DICOM-RST
    # backend: S3
    endpoint: str | None = _key(_url, None, backend="S3", required=True)
    endpoint_style: str = _key(_choice("path", "vhost"), "vhost", backend="S3")
    bucket: str | None = _key(_string(), None, backend="S3", required=True)
    region: str = _key(_string(), "us-east-1", backend="S3")
    concurrency: int = _key(_integer(1), 32, backend="S3")
    prefix: str = _key(_string(empty=True), "", backend="S3")
    credentials: S3Credentials | None = _key(_credentials, None, backend="S3")  # None: anonymous
    # backend: LOCAL (not in DICOM-RST): the directory holding the Part-10 files
    path: str | None = _key(_string(), None, backend="LOCAL", required=True)

    def move_senders(self) -> tuple[tuple[str, str], ...]:
        """(calling AE title, host) of each node whose C-STOREs may belong to a C-MOVE of
        this PACS: ``wado-rs.senders``, or the PACS itself."""
        assert self.host is not None  # a DIMSE AET
        entries = self.wado_rs.senders or (SenderConfig(),)
        return tuple((s.aet or self.aet, s.host or self.host) for s in entries)


def _aet_entry(value: Any, path: str, env: _Env) -> AetConfig:
    # Which keys are allowed or required depends on `backend`, so read it first.
    backend = "DIMSE"
    if isinstance(value, Mapping) and "backend" in value:
        backend = _BACKEND(value["backend"], _join(path, "backend"), env)
    return _build(AetConfig, value, path, env, backend)


_SHAPES[_credentials] = (_CredentialKeys, False)
_SHAPES[_aet_entry] = (AetConfig, False)


def _index_url(value: Any, path: str, env: _Env) -> str:
    """``sqlite:PATH`` or ``postgresql://...`` (``postgres://`` too, as libpq takes it)."""
    text = _string()(value, path, env)
    if text.startswith("sqlite:"):
        if not text[len("sqlite:"):].strip():
            raise ConfigError(path, "sqlite: needs a file path, e.g. sqlite:dicomrst-data/index.sqlite")
        return text
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError for a port like :99999 or :abc
        ok = parts.scheme in ("postgresql", "postgres")
    except ValueError:
        ok = False
    if not ok:
        shown = text if "@" not in text else "a URL"  # it may hold a password
        raise ConfigError(path, f"expected sqlite:PATH or a postgresql:// URL, got {shown!r}")
    return text


@attrs.frozen
class IndexConfig:
    """Not in DICOM-RST: the index LOCAL and S3 AETs are searched with (``dicomrst.index``)."""

    url: str = _key(_index_url, "sqlite:dicomrst-data/index.sqlite")
    # The reconcile scan runs at start and then this often; 0: only at start.
    scan_interval: int = _key(_MS, 300_000)

    @property
    def scan_interval_s(self) -> float:
        return self.scan_interval / 1000


@attrs.frozen
class Config:
    telemetry: TelemetryConfig = _key(_section(TelemetryConfig), factory=TelemetryConfig)
    server: ServerConfig = _key(_section(ServerConfig), factory=ServerConfig)
    aets: tuple[AetConfig, ...] = _key(_list_of(_aet_entry), factory=tuple)
    index: IndexConfig = _key(_section(IndexConfig), factory=IndexConfig)

    def aet(self, name: str) -> AetConfig | None:
        return next((a for a in self.aets if a.aet == name), None)


# -- loading ------------------------------------------------------------------------------


def default_resolver(host: str) -> object:
    """Resolve `host`; raises OSError if it cannot be resolved.

    Blocking, which is fine: the config is read before the reactor runs.
    """
    return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)


def _unique_aets(titles: list[str], prefix: str) -> None:
    first: dict[str, int] = {}
    for i, title in enumerate(titles):
        if title in first:
            raise ConfigError(f"{prefix}[{i}].aet",
                              f"duplicate AET {title!r} (also {prefix}[{first[title]}])")
        first[title] = i


# -- environment overrides --------------------------------------------------------------

#: What every override's name starts with (matched in any case, as DICOM-RST does).
ENV_PREFIX = "DICOM_RST_"
_WORD = re.compile(r"([A-Za-z0-9]+)(?:\[(-?[0-9]+)\])?")

#: One step of a key path: a key (as spelled in the schema), or a list index.
_Step = tuple[str, str | int]


def _words(rest: str) -> list[tuple[str, int | None]] | None:
    """``AETS[0]_HOST`` → [("aets", 0), ("host", None)]: `_` and `-` separate words, a
    word may end in a subscript.  None if the name has anything else."""
    words = []
    for word in re.split(r"[_-](?![^\[]*\])", rest):  # not inside a subscript: [-1]
        match = _WORD.fullmatch(word)
        if match is None:
            return None
        index = match.group(2)
        words.append((match.group(1).lower(), None if index is None else int(index)))
    return words


def _resolve(cls: type, words: list[tuple[str, int | None]], start: int = 0) -> list[_Step] | None:
    """The key path in `cls`'s schema that `words[start:]` spell, or None.

    A key's words are its kebab-case parts (``max-upload-size``: three), so a `_` in the
    variable's name stands for a ``.`` or a ``-`` of the path, whichever the schema has;
    a list entry is a subscript on the list's key (``AETS[0]``, DICOM-RST's form) or a
    number word after it (``AETS_0``, which a shell can export)."""
    fields = {f.name.replace("_", "-"): f for f in attrs.fields(cls)}
    fields.update({f.metadata["alias"]: f for f in attrs.fields(cls) if f.metadata["alias"]})
    for spelled in sorted(fields, key=len, reverse=True):
        parts = spelled.split("-")
        end = start + len(parts)
        seg = words[start:end]
        if [name for name, _ in seg] != parts or any(i is not None for _, i in seg[:-1]):
            continue
        index = seg[-1][1]
        schema, many = _SHAPES.get(fields[spelled].metadata["check"], (None, False))
        steps: list[_Step] = [("key", spelled)]
        if many:
            if index is None and end < len(words) and words[end][0].isdigit() and words[end][1] is None:
                index, end = int(words[end][0]), end + 1
            if index is not None:
                steps.append(("index", index))
            elif end < len(words):
                continue  # words after a list's key that are no index
        elif index is not None:
            continue
        if end == len(words):
            if schema is None:
                return steps  # a key (a scalar, a list of scalars, or one of them)
            continue  # a section or an entry: its keys are set, not it
        if schema is None:
            continue
        rest = _resolve(schema, words, end)
        if rest is not None:
            return steps + rest
    return None


def _show_path(steps: list[_Step]) -> str:
    out = ""
    for kind, key in steps:
        out += f"[{key}]" if kind == "index" else (f".{key}" if out else str(key))
    return out


def _env_value(name: str, text: str) -> Any:
    """A variable's value as the YAML scalar (or flow list) it spells; empty is ``""``."""
    if text == "":
        return ""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(name, f"not a YAML value: {e}") from None


def _apply_environment(data: Any, environ: Mapping[str, str]) -> tuple[Any, dict[str, str]]:
    """`data` (the file's YAML, None for none) with every ``DICOM_RST_*`` variable of
    `environ` applied over it; and which key path each variable set."""
    found = []
    for name, text in environ.items():
        if not name.upper().startswith(ENV_PREFIX) or len(name) == len(ENV_PREFIX):
            continue
        words = _words(name[len(ENV_PREFIX):])
        steps = _resolve(Config, words) if words else None
        if steps is None:
            raise ConfigError(name, "names no configuration key (DICOM_RST_ + the key path in upper case, "
                                    "'_' for '.' and '-', e.g. DICOM_RST_SERVER_HTTP_PORT, "
                                    "DICOM_RST_AETS_0_HOST)")
        found.append((steps, name, _env_value(name, text)))
    if not found:
        return data, {}
    # In path order, so entries of a list are added in index order.
    found.sort(key=lambda item: [(0, k, 0) if kind == "key" else (1, "", k) for kind, k in item[0]])
    root = copy.deepcopy(data) if data is not None else {}
    if not isinstance(root, Mapping):
        return data, {}  # the file's own error is reported
    origins = {}
    for steps, name, value in found:
        _set_path(root, Config, steps, value, name)
        origins[_show_path(steps)] = name
    return root, origins


def _set_path(node: Any, cls: type, steps: list[_Step], value: Any, name: str) -> None:
    fields = {f.name.replace("_", "-"): f for f in attrs.fields(cls)}
    fields.update({f.metadata["alias"]: f for f in attrs.fields(cls) if f.metadata["alias"]})
    i = 0
    while i < len(steps):
        _, spelled = steps[i]
        assert isinstance(spelled, str)
        field = fields[spelled]
        # Where the file has the key under its other spelling (``host`` for ``interface``), that one.
        spellings = [field.name.replace("_", "-"), field.metadata["alias"]]
        key = next((k for k in spellings if k and k in node), spelled)
        where = _show_path(steps[: i + 1])
        if i == len(steps) - 1:
            node[key] = value
            return
        schema, many = _SHAPES[field.metadata["check"]]
        child = node.get(key)
        if many:
            index = steps[i + 1][1]
            assert isinstance(index, int)
            if child is None:
                # Not in the file: the default list, each entry all defaults.
                factory = getattr(field.default, "factory", None)
                child = [{} for _ in (factory() if factory is not None else ())]
            if not isinstance(child, list):
                raise ConfigError(name, f"cannot set {_show_path(steps)}: {where} is not a list")
            node[key] = child
            at = index + len(child) if index < 0 else index
            if at == len(child):
                child.append({})
            elif not 0 <= at < len(child):
                raise ConfigError(name, f"cannot set {_show_path(steps)}: {where} has {len(child)} "
                                        "entries; add them in order, from the next index")
            if i + 1 == len(steps) - 1:
                child[at] = value
                return
            entry = child[at]
            if entry is None:
                entry = child[at] = {}
            if not isinstance(entry, dict):
                raise ConfigError(name, f"cannot set {_show_path(steps)}: {where}[{index}] is not a mapping")
            node, i = entry, i + 2
        else:
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(name, f"cannot set {_show_path(steps)}: {where} is not a mapping")
            node, i = child, i + 1
        assert schema is not None
        cls = schema
        fields = {f.name.replace("_", "-"): f for f in attrs.fields(cls)}
        fields.update({f.metadata["alias"]: f for f in attrs.fields(cls) if f.metadata["alias"]})


def parse_config(data: object, resolve: Callable[[str], object] = default_resolver,
                 environ: Mapping[str, str] = os.environ) -> Config:
    """Validate already-parsed YAML (None = all defaults), with the ``DICOM_RST_*``
    variables of `environ` over it, and build the `Config`.

    `resolve(host)` must raise OSError (or ValueError) for a host that does not resolve;
    `environ` also supplies ``credentials.*-env`` variables.  An error in a value a
    variable set names the variable too.
    """
    data, origins = _apply_environment(data, environ)
    try:
        return _parse(data, resolve, environ)
    except ConfigError as e:
        for key, name in origins.items():
            if e.path == key or e.path.startswith((key + ".", key + "[")):
                raise ConfigError(e.path, f"{e.message} (set by {name})", file=e.file, line=e.line) from None
        raise


def _parse(data: object, resolve: Callable[[str], object], environ: Mapping[str, str]) -> Config:
    config: Config = _build(Config, {} if data is None else data, "", environ)
    _unique_aets([a.aet for a in config.aets], "aets")
    listeners = [d.aet for d in config.server.dimse]
    _unique_aets(listeners, "server.dimse")
    archives = {a.aet: a.backend for a in config.aets}
    storing: dict[str, str] = {}
    for i, listener in enumerate(config.server.dimse):
        if listener.store_to is None:
            continue
        backend = archives.get(listener.store_to)
        if backend not in ("LOCAL", "S3"):
            what = f"a {backend} AET" if backend else "no aets[].aet"
            raise ConfigError(f"server.dimse[{i}].store-to",
                              f"{listener.store_to!r} names {what}; it must name a LOCAL or S3 AET")
        storing[listener.aet] = listener.store_to
    for i, entry in enumerate(config.aets):
        for j, receiver in enumerate(entry.wado_rs.receivers):
            if receiver not in listeners:
                known = ", ".join(listeners) or "none configured"
                raise ConfigError(f"aets[{i}].wado-rs.receivers[{j}]",
                                  f"{receiver!r} names no server.dimse[].aet ({known})")
            if receiver in storing:
                # Its C-STOREs go into the archive: sub-operations of a move would too.
                raise ConfigError(f"aets[{i}].wado-rs.receivers[{j}]",
                                  f"{receiver!r} stores into {storing[receiver]} (store-to); a C-MOVE "
                                  "destination must be a listener without store-to")
    _check_auth(config.server.auth)
    _check_tls(config.server.http.tls, "server.http.tls", config.server.http.endpoint)
    for i, listener in enumerate(config.server.dimse):
        _check_tls(listener.tls, f"server.dimse[{i}].tls", listener.endpoint)
    for i, entry in enumerate(config.aets):
        _check_tls(entry.tls, f"aets[{i}].tls")
    # DNS last, so a typo elsewhere is reported without waiting on the resolver.
    for i, entry in enumerate(config.aets):
        if entry.host is None:  # an S3 AET
            continue
        hosts = [(f"aets[{i}].host", entry.host)]
        hosts += [(f"aets[{i}].wado-rs.senders[{j}].host", sender.host)
                  for j, sender in enumerate(entry.wado_rs.senders)
                  if sender.host is not None and parse_network(sender.host) is None]
        for key, host in hosts:
            try:
                resolve(host)
            except (OSError, ValueError) as e:  # IDNA failures are UnicodeError
                raise ConfigError(key, f"cannot resolve {host!r}: {e}") from None
    return config


def _check_auth(auth: AuthConfig) -> None:
    if auth.oidc is not None and (auth.oidc.jwks_url is None) == (auth.oidc.jwks_file is None):
        raise ConfigError("server.auth.oidc", "give exactly one of jwks-url and jwks-file")
    if auth.anonymous is False and not auth.configured:
        raise ConfigError("server.auth.anonymous",
                          "false with no method (basic, oidc) configured would let no one in")


def config_warnings(config: Config) -> list[str]:
    """What in a valid configuration is probably a mistake, one line each; logged at start.

    * A time below 1000 ms: dicomrst reads every time key in milliseconds.  DICOM-RST
      documents milliseconds too, and reads them so, except ``server.http.request-timeout``,
      which its code reads as seconds: ``request-timeout: 60`` copied from a DICOM-RST
      config makes every request here time out after 60 ms.
    * ``telemetry.sentry``: accepted so DICOM-RST configs load; nothing is sent to Sentry.
    * ``telemetry.audit.endpoint`` over plain ``tcp:`` to another host: patient data in clear.
    """
    warnings: list[str] = []
    http = config.server.http
    if 0 < http.request_timeout < 1000:
        warnings.append(
            f"server.http.request-timeout is {http.request_timeout} ms: dicomrst reads it in "
            "milliseconds, DICOM-RST's code in seconds; for "
            f"{http.request_timeout} seconds write {http.request_timeout * 1000}"
        )
    times = [
        ("server.http.header-timeout", http.header_timeout),
        ("server.cache.ttl", config.server.cache.ttl),
    ]
    if config.index.scan_interval:
        times.append(("index.scan-interval", config.index.scan_interval))
    for i, aet in enumerate(config.aets):
        if aet.backend != "DIMSE":
            continue
        times += [
            (f"aets[{i}].pool.timeout", aet.pool.timeout),
            (f"aets[{i}].pool.idle-timeout", aet.pool.idle_timeout),
            (f"aets[{i}].qido-rs.timeout", aet.qido_rs.timeout),
            (f"aets[{i}].wado-rs.timeout", aet.wado_rs.timeout),
            (f"aets[{i}].stow-rs.timeout", aet.stow_rs.timeout),
            (f"aets[{i}].mwl-rs.timeout", aet.mwl_rs.timeout),
        ]
    for key, ms in times:
        if ms < 1000:
            hint = f"for {ms} seconds write {ms * 1000}" if ms else "0 leaves no time at all"
            warnings.append(f"{key} is {ms} ms: times are in milliseconds (as in DICOM-RST's files); {hint}")
    if not config.server.auth.configured:
        for i, aet in enumerate(config.aets):
            lists = [] if aet.access is None else [aet.access.read, aet.access.write]
            if any(lst for lst in lists):
                warnings.append(
                    f"aets[{i}].access names users or roles, but server.auth configures no method: "
                    "no request can match them"
                )
    audit = config.telemetry.audit
    if audit is not None and audit.endpoint.startswith("tcp:"):
        host = audit.endpoint.split(":")[1].removeprefix("host=")
        if host not in ("localhost", "127.0.0.1"):
            warnings.append(
                f"telemetry.audit.endpoint {audit.endpoint!r} sends the audit records (patient data) "
                "unencrypted; use tls: unless the collector is on this host"
            )
    if config.telemetry.sentry is not None:
        warnings.append(
            "telemetry.sentry is set, but dicomrst does not report to Sentry: the key is "
            "accepted so DICOM-RST configs load, and ignored"
        )
    return warnings


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` may legitimately be overridden
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


#: Where a first run (no ``--config``) keeps its data, relative to the working directory.
FIRST_RUN_DIRECTORY = "dicomrst-data"


def first_run_data() -> dict[str, Any]:
    """The configuration of ``twistd dicomrst`` without ``--config``: something to try
    with nothing else installed.  One LOCAL AET ``LOCAL`` in ``./dicomrst-data/objects``,
    HTTP on 127.0.0.1:8080, and a listener ``DICOMRST`` on 127.0.0.1:11112 that stores
    what is pushed to it into ``LOCAL`` (compressed syntaxes taken as sent).  Loopback
    only: a first run must not open an archive to the network."""
    return {
        "server": {
            "http": {"interface": "127.0.0.1", "port": 8080},
            "dimse": [
                {
                    "aet": "DICOMRST",
                    "interface": "127.0.0.1",
                    "port": 11112,
                    "store-to": "LOCAL",
                    "uncompressed": False,
                }
            ],
        },
        "aets": [{"aet": "LOCAL", "backend": "LOCAL", "path": f"{FIRST_RUN_DIRECTORY}/objects"}],
    }


def first_run_config(resolve: Callable[[str], object] = default_resolver,
                     environ: Mapping[str, str] = os.environ) -> Config:
    """`first_run_data`, with the ``DICOM_RST_*`` variables of `environ` over it."""
    return parse_config(first_run_data(), resolve, environ)


def load_config(path: str | os.PathLike[str] | None,
                resolve: Callable[[str], object] = default_resolver,
                environ: Mapping[str, str] = os.environ) -> Config:
    """Read the YAML file at `path` (None = built-in defaults) into a `Config`."""
    if path is None:
        return parse_config(None, resolve, environ)
    where = os.fspath(path)
    try:
        with open(where, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(where, f"cannot read config file: {e.strerror or e}", file=where) from None
    except UnicodeDecodeError as e:
        raise ConfigError(where, f"not UTF-8 text (byte {e.start})", file=where) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "syntax error"
        if mark is None:
            raise ConfigError(where, f"invalid YAML: {problem}", file=where) from None
        raise ConfigError(f"{where}:{mark.line + 1}:{mark.column + 1}", f"invalid YAML: {problem}",
                          file=where, line=mark.line + 1) from None
    except yaml.YAMLError as e:
        raise ConfigError(where, f"invalid YAML: {e}", file=where) from None
    try:
        return parse_config(data, resolve, environ)
    except ConfigError as e:
        e.file = where
        raise
