# -*- test-case-name: tests.unit.test_auth -*-
"""Who is asking (`Principal`) and who may do what on which AET (`AccessPolicy`).

``aets[].access`` lists, per AET and action, user names and ``role:NAME`` entries; an AET
or an action without a list admits every principal the gateway admits at all (the
anonymous one too, when ``server.auth.anonymous`` lets it in), so configurations without
``access`` behave as before.  A list admits only principals it names, and the anonymous
principal has neither a name nor roles: a list never admits it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

#: ``read``: QIDO-RS, MWL-RS, every WADO-RS resource and the health check.
READ = "read"
#: ``write``: STOW-RS.
WRITE = "write"
ACTIONS = (READ, WRITE)

ROLE_PREFIX = "role:"


@attrs.frozen
class Principal:
    """An authenticated caller, or the anonymous one.

    :ivar name: the user name (basic), the token's user claim (OIDC); None: anonymous.
    :ivar roles: from the token's ``roles-claim`` (basic users have none).
    :ivar method: ``basic``, ``oidc`` or ``anonymous``, for log lines.
    """

    name: str | None
    roles: frozenset[str] = frozenset()
    method: str = "anonymous"

    @property
    def anonymous(self) -> bool:
        return self.name is None

    def describe(self) -> str:
        """For log lines and messages: ``alice (basic)``, ``anonymous``."""
        return "anonymous" if self.name is None else f"{self.name} ({self.method})"


ANONYMOUS = Principal(None)


@attrs.frozen
class AccessList:
    """User names and role names one action is open to."""

    users: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AccessList:
        """``alice``, ``role:radiology``: entries as ``aets[].access`` writes them."""
        users: set[str] = set()
        roles: set[str] = set()
        for entry in entries:
            if entry.startswith(ROLE_PREFIX):
                roles.add(entry[len(ROLE_PREFIX) :])
            else:
                users.add(entry)
        return cls(frozenset(users), frozenset(roles))

    def admits(self, principal: Principal) -> bool:
        if principal.name is None:
            return False
        return principal.name in self.users or not self.roles.isdisjoint(principal.roles)


@attrs.frozen
class AetAccess:
    """One AET's lists; None: the action is open to every admitted principal."""

    read: AccessList | None = None
    write: AccessList | None = None

    def list_for(self, action: str) -> AccessList | None:
        if action == READ:
            return self.read
        if action == WRITE:
            return self.write
        raise ValueError(f"unknown action {action!r}")


@attrs.frozen
class AccessPolicy:
    """``aets[].access`` of every AET that has one (the others are open)."""

    aets: Mapping[str, AetAccess] = attrs.field(factory=dict)

    def allows(self, principal: Principal, aet: str, action: str) -> bool:
        rules = self.aets.get(aet)
        if rules is None:
            return True
        access = rules.list_for(action)
        return access is None or access.admits(principal)

    def restricts(self, aet: str, action: str) -> bool:
        """Whether `aet` has a list for `action` at all."""
        rules = self.aets.get(aet)
        return rules is not None and rules.list_for(action) is not None
