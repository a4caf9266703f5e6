# -*- test-case-name: tests.unit.test_auth -*-
"""``server.auth``: from a request's ``Authorization`` header to a `Principal`.

Any combination of Basic (`BasicAuthenticator`) and Bearer (`BearerAuthenticator`), plus
the anonymous principal for requests without credentials when ``anonymous`` allows it
(by default only when no method is configured, so configurations from before
``server.auth`` keep working).  Credentials that are given are always checked: wrong
ones are a 401 even where anonymous requests are let in, never a silent downgrade.  With
no method configured the header is not looked at (a proxy in front may add its own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from dicomrst.auth.principal import ANONYMOUS, Principal
from dicomrst.errors import Unauthorized

if TYPE_CHECKING:
    # Types only: OIDC's JOSE library is imported when server.auth.oidc is configured.
    from dicomrst.auth.basic import BasicAuthenticator
    from dicomrst.auth.oidc import BearerAuthenticator

DEFAULT_REALM = "dicomrst"


class Authenticator:
    """:param basic: ``server.auth.basic``, or None.
    :param bearer: ``server.auth.oidc``, or None.
    :param anonymous: whether a request without credentials is let in (as `ANONYMOUS`);
        None: only when neither method is configured.
    """

    def __init__(
        self,
        basic: BasicAuthenticator | None = None,
        bearer: BearerAuthenticator | None = None,
        anonymous: bool | None = None,
    ) -> None:
        self.basic = basic
        self.bearer = bearer
        self.configured = basic is not None or bearer is not None
        self.anonymous = (not self.configured) if anonymous is None else anonymous
        self.challenges = tuple(m.challenge for m in (basic, bearer) if m is not None)

    @classmethod
    def open(cls) -> Authenticator:
        """No method, everyone in: the gateway before ``server.auth``."""
        return cls()

    def authenticate(self, authorization: bytes | None) -> Deferred[Principal]:
        """The principal of a request whose ``Authorization`` header is `authorization`
        (None: absent); fails with `Unauthorized` carrying the challenges to send."""
        if not self.configured:
            return succeed(ANONYMOUS)
        if authorization is None or not authorization.strip():
            if self.anonymous:
                return succeed(ANONYMOUS)
            return _failed(Unauthorized("authentication required", self.challenges))
        scheme, _, credentials = authorization.strip().partition(b" ")
        scheme = scheme.lower()
        if scheme == b"basic" and self.basic is not None:
            d = self.basic.authenticate(credentials)
        elif scheme == b"bearer" and self.bearer is not None:
            d = self.bearer.authenticate(credentials)
        else:
            return _failed(Unauthorized("unsupported authorization scheme", self.challenges))
        return d.addErrback(self._with_other_challenges)

    def _with_other_challenges(self, failure: Failure) -> Failure:
        # A failed Bearer check says why in its own challenge; the client should still
        # learn every scheme it could use.
        error = failure.value
        if isinstance(error, Unauthorized):
            schemes = {c.split(" ", 1)[0] for c in error.challenges}
            others = tuple(c for c in self.challenges if c.split(" ", 1)[0] not in schemes)
            error.challenges = error.challenges + others
        return failure


def _failed(error: Exception) -> Deferred[Principal]:
    d: Deferred[Principal] = Deferred()
    d.errback(Failure(error))
    return d
