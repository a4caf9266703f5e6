# -*- test-case-name: tests.integration.test_s3 -*-
"""S3 requests on the reactor: SigV4 signing with botocore, HTTP with treq.

botocore is used for two things only: `S3SigV4Auth` signs an `AWSRequest` built from our
method, URL and headers (never a body: the payload hash is given as a header), and
`botocore.credentials` resolves the default chain.  Resolving the chain may block (instance
metadata, assume-role), so it runs in a thread, once at start and again only when
refreshable credentials are near their expiry; every request is signed on the reactor
with frozen credentials.

Virtual-hosted style puts the bucket in the host name.  Names under ``.localhost`` are
special (RFC 6761 §6.3: they always mean the loopback address) but most resolvers do not
know it, so the endpoint factory connects such hosts to ``localhost`` while the request
keeps its ``Host: bucket.localhost:port`` header.  Every other host is resolved normally.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from typing import cast
from urllib.parse import quote, urlsplit

import attrs
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from treq.client import HTTPClient
from twisted.internet import error as net_error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.client import (  # type: ignore[attr-defined]  # RequestNotSent: not in its __all__
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RequestGenerationFailed,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from dicomrst.common.metrics import Metrics
from dicomrst.common.reactor import IGatewayReactor
from dicomrst.config import S3Credentials
from dicomrst.errors import ServiceUnavailable, UpstreamError, UpstreamTimeout
from dicomrst.logs import logger

log = logger("dicomrst.s3")

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"

#: Bounds, in seconds; DICOM-RST uses 5 s to connect and 20 s between reads.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 20.0
#: Attempts per request for throttling (503 SlowDown), 500s and connection failures.
ATTEMPTS = 4
BACKOFF = 0.2  # first delay; doubles per attempt
RETRY_STATUSES = frozenset((500, 502, 503, 504))


@attrs.frozen
class ListedObject:
    """An object as ListObjectsV2 lists it."""

    key: str
    size: int
    etag: str  # as listed, quotes included: what changes when the object does


class S3Error(UpstreamError):
    """S3 answered with an error status; `code` is S3's error code (``NoSuchBucket``...)."""

    def __init__(self, bucket: str, status: int, code: str, message: str, key: str | None = None) -> None:
        what = f"bucket {bucket!r}" + (f" key {key!r}" if key else "")
        super().__init__(f"S3 {code} ({status}) for {what}" + (f": {message}" if message else ""))
        self.status = status
        self.code = code


class S3Unreachable(UpstreamTimeout):
    """No answer from the S3 endpoint: refused, unresolvable, timed out (504)."""


class S3Throttled(ServiceUnavailable):
    """S3 still asked us to slow down after every retry (503 with Retry-After)."""


#: Error codes implied by the status of a response without a body (HEAD).
_STATUS_CODES = {301: "PermanentRedirect", 400: "BadRequest", 403: "AccessDenied", 404: "NotFound",
                 412: "PreconditionFailed", 503: "SlowDown"}  # fmt: skip


def parse_error(body: bytes, status: int) -> tuple[str, str]:
    """(Code, Message) from an S3 error document; only these two fields are kept, so
    nothing else the server echoes (canonical request, string to sign) reaches a client."""
    try:
        root = ET.fromstring(body)
        code = (root.findtext("Code") or root.findtext(f"{S3_NS}Code") or "").strip()
        message = (root.findtext("Message") or root.findtext(f"{S3_NS}Message") or "").strip()
    except ET.ParseError:
        code, message = "", ""
    return code or _STATUS_CODES.get(status, f"HTTP{status}"), message[:300]


# -- credentials -------------------------------------------------------------------------


class CredentialSource:
    """Frozen credentials for signing, or None for anonymous access."""

    def __init__(self, config: S3Credentials | None, reactor: IGatewayReactor) -> None:
        self.config = config
        self.reactor = reactor
        self._chain: Credentials | None = None
        self._frozen: ReadOnlyCredentials | None = None
        self._waiters: list[Deferred[ReadOnlyCredentials | None]] = []
        if config is not None and config.source != "chain":
            assert config.access_key is not None and config.secret_key is not None
            self._frozen = ReadOnlyCredentials(config.access_key, config.secret_key, None)

    def start(self) -> Deferred[None]:
        """Resolve the chain (if configured) in a thread; fires when done."""
        if self.config is None or self.config.source != "chain":
            return succeed(None)
        d = self._refresh()
        d.addCallback(lambda _: None)
        return d

    def _refresh(self) -> Deferred[ReadOnlyCredentials | None]:
        waiter: Deferred[ReadOnlyCredentials | None] = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:  # one resolution at a time; later callers wait for it
            reactor = self.reactor
            resolving = deferToThreadPool(reactor, reactor.getThreadPool(), self._resolve_blocking)

            def done(result: object) -> None:
                waiters, self._waiters = self._waiters, []
                if isinstance(result, Failure):
                    log.error("S3 credential chain failed: {why}", why=result.getErrorMessage())
                    for w in waiters:
                        w.errback(result)
                else:
                    self._frozen = result
                    for w in waiters:
                        w.callback(result)

            resolving.addBoth(done)
        return waiter

    def _resolve_blocking(self) -> ReadOnlyCredentials | None:
        # In a thread: botocore may call instance metadata or STS here.
        if self._chain is None:
            import botocore.session

            self._chain = botocore.session.get_session().get_credentials()
        if self._chain is None:
            raise UpstreamError("no credentials found in botocore's default chain")
        return self._chain.get_frozen_credentials()

    async def current(self) -> ReadOnlyCredentials | None:
        if self.config is None:
            return None
        chain = self._chain
        stale = isinstance(chain, RefreshableCredentials) and chain.refresh_needed()
        if self._frozen is None or stale:
            try:
                return await self._refresh()
            except Exception as e:
                if self._frozen is None:
                    raise UpstreamError(f"no S3 credentials: {e}") from None
        return self._frozen


class _PayloadSigner(S3SigV4Auth):  # type: ignore[misc]  # botocore ships no types: S3SigV4Auth is Any
    """SigV4 for S3 with the payload hash we give (bodies are streamed, never handed to
    botocore)."""

    def __init__(self, credentials: ReadOnlyCredentials, region: str, payload_hash: str) -> None:
        super().__init__(credentials, "s3", region)
        self._payload_hash = payload_hash

    def payload(self, request: AWSRequest) -> str:
        return self._payload_hash


# -- connections -------------------------------------------------------------------------


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """HostnameEndpoint per URI (TLS for https); ``*.localhost`` connects to localhost;
    connections counted by `metrics` (None: metrics are off)."""

    def __init__(
        self, reactor: IGatewayReactor, connect_timeout: float, metrics: Metrics | None = None
    ) -> None:
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.tls = BrowserLikePolicyForHTTPS()
        self.metrics = metrics

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        endpoint: IStreamClientEndpoint
        if isIPAddress(host):  # no resolver thread for an address
            endpoint = TCP4ClientEndpoint(self.reactor, host, uri.port, timeout=self.connect_timeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self.reactor, host, uri.port, timeout=self.connect_timeout)
        else:
            connect_host = "localhost" if host.lower().endswith(".localhost") else host
            endpoint = HostnameEndpoint(
                self.reactor, connect_host.encode("idna"), uri.port, timeout=self.connect_timeout
            )
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self.tls.creatorForNetloc(uri.host, uri.port), endpoint)
        if self.metrics is not None:
            endpoint = _Counting(endpoint, self.metrics)
        return endpoint


@implementer(IStreamClientEndpoint)
class _Counting:
    """An endpoint whose connections count the HTTP bytes (headers and bodies, inside
    TLS) they carry, in and out: at the connection, which every request and response
    passes whichever of the client's paths writes or reads it."""

    def __init__(self, endpoint: IStreamClientEndpoint, metrics: Metrics) -> None:
        self._endpoint = endpoint
        self._metrics = metrics

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        factory = _CountingFactory(protocolFactory, self._metrics)
        # The Agent's pool wants its own protocol back, not the wrapper (as wrapClientTLS does).
        d: Deferred[_Counted] = self._endpoint.connect(factory)  # type: ignore[assignment]  # built by factory
        return d.addCallback(lambda wrapper: wrapper.wrappedProtocol)


class _CountingFactory(WrappingFactory):
    def __init__(self, wrapped: IProtocolFactory, metrics: Metrics) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self.metrics = metrics
        self.protocol = _Counted


class _Counted(ProtocolWrapper):
    factory: _CountingFactory
    wrappedProtocol: IProtocol

    def dataReceived(self, data: bytes) -> None:
        self.factory.metrics.s3_received(len(data))
        super().dataReceived(data)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def write(self, data: bytes) -> None:
        self.factory.metrics.s3_sent(len(data))
        super().write(data)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def writeSequence(self, data: Iterable[bytes]) -> None:
        parts = list(data)
        self.factory.metrics.s3_sent(sum(map(len, parts)))
        super().writeSequence(parts)  # type: ignore[no-untyped-call]  # unannotated in Twisted


def encode_key(key: str) -> str:
    return quote(key, safe="/~")


def encode_query(params: Sequence[tuple[str, str]]) -> str:
    # SigV4 wants the query already in canonical encoding (RFC 3986 unreserved kept).
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in params)


#: Failures before any response: the request may be sent again.
_CONNECT_ERRORS = (
    net_error.ConnectError,
    net_error.DNSLookupError,
    net_error.TimeoutError,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseNeverReceived,
    ResponseFailed,
    net_error.ConnectionLost,
    net_error.ConnectionClosed,
)


class S3Client:
    """Signed requests to one bucket, with retries; responses are not buffered."""

    def __init__(
        self,
        reactor: IGatewayReactor,
        *,
        endpoint: str,
        style: str,
        bucket: str,
        region: str,
        credentials: CredentialSource,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
        persistent: int = 32,
        metrics: Metrics | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.bucket = bucket
        self.region = region
        self.credentials = credentials
        self.read_timeout = read_timeout
        self.attempts = attempts
        self.backoff = backoff
        parts = urlsplit(endpoint)
        base_path = parts.path.rstrip("/")
        host = parts.hostname or ""
        if style == "vhost" and (isIPAddress(host) or isIPv6Address(host)):
            # No host name to put the bucket in (MinIO and Ceph are often reached by
            # address); the AWS SDKs fall back to path style here too.
            log.warn(
                "S3 endpoint {endpoint} is an IP address: bucket {bucket} is addressed in the path",
                endpoint=endpoint,
                bucket=bucket,
            )
            style = "path"
        if style == "vhost":
            netloc = f"{bucket}.{parts.netloc}"
            self._base = f"{parts.scheme}://{netloc}{base_path}/"
        else:
            self._base = f"{parts.scheme}://{parts.netloc}{base_path}/{quote(bucket, safe='')}/"
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = persistent
        self.pool.retryAutomatically = False  # we retry, with backoff, ourselves
        endpoints = _Endpoints(reactor, connect_timeout, metrics)
        agent = Agent.usingEndpointFactory(reactor, endpoints, pool=self.pool)
        self.http = HTTPClient(agent)

    def url(self, key: str | None, query: Sequence[tuple[str, str]] = ()) -> str:
        url = self._base + (encode_key(key) if key else "")
        return url + ("?" + encode_query(query) if query else "")

    async def request(
        self,
        method: str,
        key: str | None = None,
        *,
        query: Sequence[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
        body: Callable[[], IBodyProducer] | None = None,
        payload_hash: str = EMPTY_SHA256,
        ok: Iterable[int] = (200,),
    ) -> IResponse:
        """Send a signed request; return the response once its status is in `ok` (its
        body unread).  Other statuses raise `S3Error` (the error body read and closed);
        500/503 and connection failures are retried `attempts` times with backoff first.
        A timeout or an endpoint that cannot be reached raises `S3Unreachable` (504)."""
        ok = frozenset(ok)
        url = self.url(key, query)
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            last = attempt == self.attempts
            try:
                response = await self._send(method, url, headers or {}, body, payload_hash)
            except CancelledError:
                raise
            except (TimeoutError, *_CONNECT_ERRORS) as e:
                if last:
                    what = "did not answer in time" if isinstance(e, TimeoutError) else "is unreachable"
                    raise S3Unreachable(
                        f"S3 endpoint for bucket {self.bucket!r} {what}: {_reason(e)}"
                    ) from None
                log.info(
                    "S3 {method} {key}: {why}; retry {n}",
                    method=method,
                    key=key or "/",
                    why=_reason(e),
                    n=attempt,
                )
            else:
                if response.code in ok:
                    return response
                data = await self._read_error(response)
                code, message = parse_error(data, response.code)
                if response.code not in RETRY_STATUSES or last:
                    if response.code == 503:
                        raise S3Throttled(
                            f"S3 {code} for bucket {self.bucket!r} after {attempt} attempts", retry_after=1
                        )
                    raise S3Error(self.bucket, response.code, code, message, key)
                log.info(
                    "S3 {method} {key}: {code}; retry {n}",
                    method=method,
                    key=key or "/",
                    code=code,
                    n=attempt,
                )
            await deferLater(self.clock, delay, lambda: None)
            delay *= 2
        raise AssertionError("unreachable")

    async def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Callable[[], IBodyProducer] | None,
        payload_hash: str,
    ) -> IResponse:
        headers = dict(headers)
        credentials = await self.credentials.current()
        if credentials is not None:
            aws = AWSRequest(method=method, url=url, headers=headers)
            _PayloadSigner(credentials, self.region, payload_hash).add_auth(aws)
            headers = dict(aws.headers.items())
        sent = self.http.request(
            method,
            url,
            headers=Headers({k.encode("latin-1"): [v.encode("latin-1")] for k, v in headers.items()}),
            data=body() if body is not None else None,
            allow_redirects=False,
            unbuffered=True,
            reactor=self.reactor,  # type: ignore[arg-type]  # treq wants its private _ITreqReactor (TCP, time, resolver)
        )
        # Not addTimeout, and not `await sent` directly: the Agent reports a cancellation
        # as ResponseNeverReceived, or as a DNS lookup failure while connecting, which
        # would be taken for a failure to retry.  So the reason is noted before cancelling.
        why: list[str] = []

        def stop(reason: str) -> None:
            why.append(reason)
            sent.cancel()

        waiting: Deferred[IResponse] = Deferred(lambda _: stop("cancelled"))
        sent.addBoth(lambda result: None if waiting.called else waiting.callback(result))
        timer = self.clock.callLater(self.read_timeout, stop, "timeout")
        try:
            return await waiting
        except Exception:
            if why and why[0] == "cancelled":
                raise CancelledError() from None
            if why:
                raise TimeoutError() from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def _read_error(self, response: IResponse) -> bytes:
        if response.length == 0:
            return b""
        collected = _Collect(limit=64 * 1024)
        response.deliverBody(collected)
        d = collected.done
        d.addTimeout(self.read_timeout, self.clock)
        try:
            return await d
        except Exception:
            return b""

    # -- operations -----------------------------------------------------------------------

    async def list_keys(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object under `prefix`, following continuation tokens."""
        return [(item.key, item.size) for item in await self.list_objects(prefix)]

    async def list_objects(self, prefix: str) -> list[ListedObject]:
        """Every object under `prefix` (key, size, ETag), following continuation tokens."""
        found: list[ListedObject] = []
        token: str | None = None
        while True:
            query = [("list-type", "2"), ("prefix", prefix)]
            if token:
                query.append(("continuation-token", token))
            response = await self.request("GET", None, query=sorted(query))
            data = await self.read_body(response)
            try:
                root = ET.fromstring(data)
            except ET.ParseError as e:
                raise UpstreamError(f"S3 ListObjectsV2 for bucket {self.bucket!r}: bad XML: {e}") from None
            ns = S3_NS if root.tag.startswith(S3_NS) else ""
            for item in root.iter(f"{ns}Contents"):
                key = item.findtext(f"{ns}Key")
                if key is not None:
                    size = int(item.findtext(f"{ns}Size") or 0)
                    found.append(ListedObject(key, size, item.findtext(f"{ns}ETag") or ""))
            truncated = (root.findtext(f"{ns}IsTruncated") or "").strip().lower() == "true"
            token = root.findtext(f"{ns}NextContinuationToken")
            if not truncated or not token:
                return found

    async def read_body(self, response: IResponse) -> bytes:
        collected = _Collect(limit=None)
        response.deliverBody(collected)
        d = collected.done
        d.addTimeout(self.read_timeout, self.clock)
        try:
            return await d
        except TimeoutError:
            raise S3Unreachable(f"S3 endpoint for bucket {self.bucket!r} stopped sending") from None
        except Exception as e:
            raise UpstreamError(f"S3 response from bucket {self.bucket!r} cut off: {_reason(e)}") from None

    async def discard(self, response: IResponse) -> None:
        """Read and drop a body we do not need, so the connection can be reused."""
        await self.read_body(response)

    def stop(self) -> Deferred[None]:
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed


_DONE = Failure(net_error.ConnectionDone())


class _Collect(Protocol):
    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.done: Deferred[bytes] = Deferred(lambda _: body_producer(self.transport).stopProducing())

    def dataReceived(self, data: bytes) -> None:
        if self.limit is not None and self.size >= self.limit:
            return
        self.parts.append(data)
        self.size += len(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


def body_producer(transport: ITransport | None) -> IPushProducer:
    """The transport of a protocol given to `IResponse.deliverBody`, as what Twisted
    documents it to be: the IPushProducer of the body (`Protocol.transport` says ITransport)."""
    return cast(IPushProducer, transport)


# Twisted's web client wraps what went wrong in these, as `reasons` (a list of Failures).
_WRAPPED = (RequestGenerationFailed, RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived)


def _reason(e: BaseException) -> str:
    if isinstance(e, _WRAPPED):
        reasons: list[Failure] = e.reasons
        if reasons:
            return "; ".join(r.getErrorMessage() for r in reasons)
    return str(e) or type(e).__name__
