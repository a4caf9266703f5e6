# -*- test-case-name: tests.unit.test_web -*-
"""What a route handler may use: the AETs, the clock, and how this gateway's URLs look.

Handlers get this small object rather than the whole app, so the service modules
(`dicomrst.web.qido`, `.wado`, `.stow`) depend on what they use and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

import attrs
from twisted.web.iweb import IRequest

from dicomrst.backends.interfaces import IBackend
from dicomrst.cache import InstanceCache
from dicomrst.common.cpu import CpuWorkers
from dicomrst.common.metrics import Metrics
from dicomrst.common.reactor import IGatewayReactor
from dicomrst.errors import NotFound
from dicomrst.wado.ranged import RangedFrames
from dicomrst.web.access import AccessGate
from dicomrst.web.audit import WebAudit
from dicomrst.web.urls import PublicUrls

#: STOW-RS parts larger than this are spooled to a temporary file.
DEFAULT_SPOOL_THRESHOLD = 1024 * 1024


@attrs.frozen
class WebContext:
    """:ivar backends: the configured AETs, keyed by AE title (``/aets/{aet}``).
    :ivar reactor: timers and the thread pool (a `Clock` in tests that need no threads).
    :ivar base_path: URL prefix all routes live under, e.g. ``"/dicomweb"``.
    :ivar echo_timeout: seconds ``GET /aets/{aet}`` waits for the echo.
    :ivar stow_spool_dir: where large STOW-RS parts are spooled (None: the system's
        temporary directory).
    :ivar stow_spool_threshold: parts larger than this many bytes are spooled.
    :ivar cache: the instance cache (``server.cache``): WADO-RS instances and metadata
        responses fill it; frames, bulk data and rendered are served from it.  Left out:
        one that keeps nothing (`InstanceCache.off`), so routes always have one to call.
    :ivar cpu: the one bounded line of CPU work (decoding frames, rendering) all routes
        share, so a burst of image requests queues instead of taking every core from the
        reactor and the streams it serves.
    :ivar ranged: frames read by byte range from backends that can (`IRangedReads`) on a
        cache miss, and the heads of the objects read last.
    :ivar access: who may do what (``server.auth``, ``aets[].access``); `GatewayRoot`
        applies it to every request before routing.  Left out: everyone may do everything.
    :ivar urls: ``server.http.public-url`` and ``trusted-proxies``: how `base_url` is found.
    :ivar metrics: ``telemetry.metrics``: what counts (None: metrics are off).
    :ivar audit: ``telemetry.audit``: the requests that touch patient data are recorded
        there.  Left out: nothing is recorded.
    """

    backends: Mapping[str, IBackend]
    reactor: IGatewayReactor
    base_path: str = "/"
    echo_timeout: float = 10.0
    stow_spool_dir: str | None = None
    stow_spool_threshold: int = DEFAULT_SPOOL_THRESHOLD
    cache: InstanceCache = attrs.field(
        default=attrs.Factory(lambda self: InstanceCache.off(self.reactor), takes_self=True)
    )
    cpu: CpuWorkers = attrs.field(
        default=attrs.Factory(lambda self: CpuWorkers(self.reactor), takes_self=True)
    )
    ranged: RangedFrames = attrs.field(factory=RangedFrames)
    access: AccessGate = attrs.field(factory=AccessGate.open)
    urls: PublicUrls = attrs.field(factory=PublicUrls)
    metrics: Metrics | None = None
    audit: WebAudit = attrs.field(factory=WebAudit)

    def backend(self, aet: str) -> IBackend:
        """The backend for `aet`; `NotFound` (404) if no such AET is configured."""
        try:
            return self.backends[aet]
        except KeyError:
            raise NotFound(f"unknown AET '{aet}'") from None

    def base_url(self, request: IRequest) -> str:
        """``{scheme}://{host}{base-path}`` as the client addressed us: the public URL,
        else what a trusted proxy forwarded, else the connection's scheme and the Host
        header (`PublicUrls`; a malformed Host is a `BadRequest`)."""
        return self.urls.base_url(request, self.base_path)

    def service_url(self, request: IRequest, aet: str) -> str:
        """``{base}/aets/{aet}``: where RetrieveURLs and Content-Locations start."""
        return f"{self.base_url(request)}/aets/{quote(aet, safe='')}"
