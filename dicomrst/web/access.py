# -*- test-case-name: tests.unit.test_web_access -*-
"""Authentication and authorization applied to every request, in one place.

`GatewayRoot` (``dicomrst.web.app``) asks `AccessGate.check` before it hands any request
to Klein: the request's ``Authorization`` becomes a `Principal` (``server.auth``), and the
route's `Requirement` (from the table ``dicomrst.web.app.ROUTE_ACCESS``, which must name
every route of Klein's URL map or the app does not build) decides whether that principal
may go on (``aets[].access``).  Handlers never check anything themselves, so a new route
cannot forget to; ``GET /aets`` asks `AccessGate.readable` for its list.

A STOW-RS body is stored while it arrives, so its check starts when the headers are in
(`AccessGate.streamed_body`): until the check is decided the body is held (not read,
nothing stored); allowed, it goes to the upload; refused, the request is answered 401 or
403 at once and the connection closed, the body unread.  The route then waits for that
same decision rather than deciding again.

CORS preflights (``OPTIONS``) are answered before any of this: browsers never send
credentials with them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from weakref import WeakKeyDictionary

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from dicomrst.auth.authenticator import Authenticator
from dicomrst.auth.principal import ANONYMOUS, READ, WRITE, AccessPolicy, Principal
from dicomrst.errors import Forbidden, Unauthorized
from dicomrst.logs import logger
from dicomrst.web.site import BodyConsumer, GatewayRequest

log = logger("dicomrst.web")


class Need(enum.Enum):
    """What a route asks of the caller."""

    #: Admitted at all (``GET /``, ``GET /aets``, and any path no route matches).
    ADMITTED = "admitted"
    #: ``read`` on the route's AET: QIDO-RS, MWL-RS, WADO-RS, the health check.
    READ = READ
    #: ``write`` on the route's AET: STOW-RS.
    WRITE = WRITE


@attrs.frozen
class Requirement:
    need: Need
    aet: str | None = None


ADMITTED = Requirement(Need.ADMITTED)


class AccessGate:
    """Decides whether a request may go on (see the module's docstring)."""

    def __init__(self, authenticator: Authenticator, policy: AccessPolicy) -> None:
        self.authenticator = authenticator
        self.policy = policy
        self._principals: WeakKeyDictionary[IRequest, Principal] = WeakKeyDictionary()
        self._early: WeakKeyDictionary[IRequest, GatedBody] = WeakKeyDictionary()

    @classmethod
    def open(cls) -> AccessGate:
        """Everyone may do everything: the gateway without ``server.auth`` or ``access``."""
        return cls(Authenticator.open(), AccessPolicy())

    @property
    def unrestricted(self) -> bool:
        """Every request is let in, whatever it asks (no method configured, anonymous
        allowed, no access lists): the route need not be looked up to decide."""
        auth = self.authenticator
        return not auth.configured and auth.anonymous and not self.policy.aets

    def admitted_at_once(self, request: IRequest) -> Principal | None:
        """The principal `check` would give `request` at once, whatever it asks, when the
        gate is `unrestricted` (anonymous, everyone may do everything); None when `check`
        must decide.  Lets the caller go on without a Deferred (issue 15)."""
        if self.unrestricted and request not in self._early:
            return ANONYMOUS
        return None

    def check(self, request: IRequest, requirement: Requirement) -> Deferred[Principal]:
        """The request's principal, once it is known to meet `requirement`; fails with
        `Unauthorized` (401) or `Forbidden` (403), or `ServiceUnavailable` when the
        check cannot be made now."""
        early = self._early.pop(request, None)
        if early is not None:
            return early.wait()
        d = self.authenticator.authenticate(request.getHeader(b"authorization"))
        d.addCallback(self._authorize, request, requirement)
        d.addErrback(self._log_refusal, request)
        return d

    def principal(self, request: IRequest) -> Principal:
        """Who `request` was let in as (anonymous if it was not checked)."""
        return self._principals.get(request, ANONYMOUS)

    def readable(self, request: IRequest, aets: Iterable[str]) -> list[str]:
        """Those of `aets` the caller of `request` may read."""
        principal = self.principal(request)
        return [aet for aet in aets if self.policy.allows(principal, aet, READ)]

    def streamed_body(
        self,
        request: GatewayRequest,
        requirement: Requirement,
        make: Callable[[], BodyConsumer],
        refuse: Callable[[GatewayRequest, Failure], None],
    ) -> BodyConsumer:
        """The consumer of a body that must not be taken before `requirement` is met:
        `make`'s when the check is decided at once and allows it, else a `GatedBody`
        holding it until the check is decided (`refuse` answers a refusal)."""
        gate = GatedBody(request, make, refuse)
        self.check(request, requirement).addBoth(gate.decided)
        if gate.upload is not None:  # allowed at once: no gate needed
            return gate.upload
        if gate.refused:
            # Decided before Twisted sends "100 Continue": it must not invite the body.
            request.requestHeaders.removeHeader(b"Expect")
        else:
            request.pause_body(gate)
        self._early[request] = gate
        return gate

    def _authorize(self, principal: Principal, request: IRequest, requirement: Requirement) -> Principal:
        aet = requirement.aet
        if requirement.need is not Need.ADMITTED and aet is not None:
            action = requirement.need.value
            if not self.policy.allows(principal, aet, action):
                if principal.anonymous and self.authenticator.configured:
                    # Credentials could help: invite them rather than forbid.
                    message = f"authentication required to {action} {aet}"
                    raise Unauthorized(message, self.authenticator.challenges)
                challenges: tuple[str, ...] = ()
                if principal.method == "oidc":
                    challenges = ('Bearer error="insufficient_scope"',)
                raise Forbidden(f"{principal.describe()} may not {action} {aet}", challenges)
        self._principals[request] = principal
        return principal

    def _log_refusal(self, failure: Failure, request: IRequest) -> Failure:
        error = failure.value
        if isinstance(error, (Unauthorized, Forbidden)):
            quiet = isinstance(error, Unauthorized) and request.getHeader(b"authorization") is None
            (log.debug if quiet else log.info)(
                "access refused: {method} {path} from {client}: {reason}",
                method=request.method.decode("ascii", "replace"),
                path=(request.path or b"-").decode("utf-8", "backslashreplace"),
                client=_client(request),
                reason=error.message,
            )
        return failure


def _client(request: IRequest) -> str:
    address = request.getClientAddress()
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host
    return str(address)  # a UNIX socket's, or a test's


class GatedBody:
    """A streamed body held until the access check is decided (`AccessGate.streamed_body`).

    Until then it keeps what arrives (little: reading is paused) and nothing is stored.
    Allowed: the real consumer (the upload) is made, given what was kept, and put in the
    gate's place on the request.  Refused: what was kept is dropped and, on the next
    reactor turn (not from inside the channel's parser), the request is answered through
    `refuse`.
    """

    def __init__(
        self,
        request: GatewayRequest,
        make: Callable[[], BodyConsumer],
        refuse: Callable[[GatewayRequest, Failure], None],
    ) -> None:
        self._request = request
        self._make = make
        self._refuse = refuse
        self._kept: list[bytes] = []
        self._finished = False
        self._over = False
        self._result: Principal | Failure | None = None
        self._waiters: list[Deferred[Principal]] = []
        self.upload: BodyConsumer | None = None

    @property
    def refused(self) -> bool:
        return isinstance(self._result, Failure)

    def wait(self) -> Deferred[Principal]:
        """The decision, for the route (which runs once the body is in)."""
        result = self._result
        if result is None:
            d: Deferred[Principal] = Deferred()
            self._waiters.append(d)
            return d
        if isinstance(result, Failure):
            return fail(result)
        return succeed(result)

    def decided(self, result: Principal | Failure) -> None:
        self._result = result
        request = self._request
        if isinstance(result, Failure):
            self._kept.clear()
            if not self._over:
                request.gateway.clock.callLater(0, self._refuse_now, result)
        elif not self._over:
            upload = self.upload = self._make()
            kept, self._kept = self._kept, []
            for chunk in kept:
                upload.dataReceived(chunk)
            if request.bodyConsumer is self:
                request.bodyConsumer = upload
            if self._finished:
                upload.bodyFinished()
            request.resume_body(self)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _refuse_now(self, failure: Failure) -> None:
        if not self._over:
            self._refuse(self._request, failure)

    # -- BodyConsumer: the request's calls while the gate stands -----------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._result is None:
            self._kept.append(data)

    def bodyFinished(self) -> None:
        self._finished = True

    def bodyTooLarge(self, reason: str) -> bool:
        return False  # nothing taken: the site answers 413

    def requestOver(self) -> None:
        self._over = True
        self._kept.clear()
        self._request.resume_body(self)
