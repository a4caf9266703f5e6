# -*- test-case-name: tests.unit.test_auth -*-
"""HTTP Basic authentication (RFC 7617) against a users file of bcrypt hashes.

The file is what ``htpasswd -B`` writes: one ``name:hash`` per line, hashes ``$2y$``
(``$2b$``/``$2a$`` too), blank lines and ``#`` comments ignored.  It is re-read when it
changes: at most once a second a request stats it (inode, size, modification and change
times), which costs microseconds, so an edit or an atomic replace takes effect for the
next request without a signal.  A file that has gone or cannot be read admits no one
until it is back: revoking by deleting the file must not keep the old users.

A bcrypt check costs tens to hundreds of milliseconds (cost 10 is ~0.1 s on one core): it
runs in `CpuWorkers` threads, never on the reactor.  A viewer sends hundreds of requests
with the same credentials, so a successful check is remembered for `CACHE_TTL` seconds,
keyed by an HMAC of name and password under a key made at start (the cache holds neither
the password nor a hash that is cheap to attack without that key), together with the
stored hash it matched: a password changed in the file no longer matches the entry.
At most `CACHE_SIZE` entries; checks of the same credentials in flight are shared.

An unknown user name is checked against another user's hash all the same, so the time
taken does not tell which names exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable

import attrs
import bcrypt
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from dicomrst.auth.principal import Principal
from dicomrst.errors import Unauthorized
from dicomrst.logs import logger

log = logger("dicomrst.auth")

#: Seconds a successful check is remembered.
CACHE_TTL = 60.0
#: Remembered checks at most (the least recently used go first).
CACHE_SIZE = 1024
#: Seconds between two stats of the users file.
STAT_INTERVAL = 1.0
#: bcrypt reads at most 72 bytes of a password; Apache's htpasswd hashes those.  bcrypt
#: 5 refuses longer ones, so they are cut as htpasswd cuts them.
BCRYPT_MAX_PASSWORD = 72
BCRYPT_PREFIXES = (b"$2y$", b"$2b$", b"$2a$")

#: Checks a password against a stored hash (in a thread): `check_password`.
Checker = Callable[[bytes, bytes], Deferred[bool]]


def check_password(password: bytes, stored: bytes) -> bool:
    """bcrypt's verdict; blocking (run it in a thread)."""
    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], stored)
    except ValueError:  # a malformed hash that slipped through parsing
        return False


def parse_users(text: bytes, source: str) -> dict[str, bytes]:
    """``name:hash`` lines → hashes by name; lines that are not bcrypt entries are
    skipped with a warning naming the line (never its content: it may be a secret)."""
    users: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        name, sep, stored = line.partition(b":")
        problem = None
        if not sep or not name:
            problem = "not name:hash"
        elif not stored.startswith(BCRYPT_PREFIXES) or len(stored) != 60:
            problem = "not a bcrypt hash (htpasswd -B)"
        else:
            try:
                text_name = name.decode("utf-8")
            except UnicodeDecodeError:
                problem = "user name not UTF-8"
        if problem is not None:
            log.warn("{source} line {line}: {problem}; ignored", source=source, line=number, problem=problem)
            continue
        if text_name in users:
            log.warn("{source} line {line}: user {user} again; the last entry counts",
                     source=source, line=number, user=text_name)
        users[text_name] = stored
    return users


class UsersFile:
    """The users file, re-read when it changes (see the module's docstring).

    :raises OSError: from the constructor, when the file cannot be read at start.
    """

    def __init__(self, path: str, clock: IReactorTime) -> None:
        self.path = path
        self._clock = clock
        self._stamp = self._stat()
        self._users = self._read()
        self._checked = clock.seconds()
        log.info("users file {path}: {count} user(s)", path=path, count=len(self._users))

    def lookup(self, name: str) -> bytes | None:
        """The stored hash of `name`, None for no such user."""
        self._refresh()
        return self._users.get(name)

    def any_hash(self) -> bytes | None:
        """Some user's stored hash (for checking unknown names at the same cost)."""
        return next(iter(self._users.values()), None)

    def reload(self) -> str:
        """Re-read the file now (SIGHUP), changed or not; a few words for the log line."""
        self._checked = self._clock.seconds()
        try:
            stamp = self._stat()
            users = self._read()
        except OSError as e:
            self._stamp = ()
            self._users = {}
            return (f"users file {self.path} cannot be read ({e.strerror or e}): no basic user is "
                    f"admitted until it can")
        self._stamp = stamp
        self._users = users
        return f"re-read users file {self.path}: {len(users)} user(s)"

    def _stat(self) -> tuple[int, ...]:
        st = os.stat(self.path)
        return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _read(self) -> dict[str, bytes]:
        with open(self.path, "rb") as f:
            return parse_users(f.read(), self.path)

    def _refresh(self) -> None:
        now = self._clock.seconds()
        if now - self._checked < STAT_INTERVAL:
            return
        self._checked = now
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return
            users = self._read()
        except OSError as e:
            if self._stamp != ():
                log.error(
                    "users file {path} cannot be read ({error}): no basic user is admitted until it can",
                    path=self.path,
                    error=e.strerror or str(e),
                )
            self._stamp = ()
            self._users = {}
            return
        self._stamp = stamp
        self._users = users
        log.info("users file {path} changed: {count} user(s)", path=self.path, count=len(users))


@attrs.define
class _Remembered:
    name: str
    stored: bytes
    expires: float


class BasicAuthenticator:
    """Checks ``Authorization: Basic`` credentials against a `UsersFile`.

    :param check: runs `check_password` off the reactor (``CpuWorkers.run`` bound to it).
    """

    def __init__(self, users: UsersFile, check: Checker, clock: IReactorTime, realm: str) -> None:
        self.users = users
        self._check = check
        self._clock = clock
        self.challenge = f'Basic realm="{realm}", charset="UTF-8"'
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, _Remembered] = OrderedDict()
        self._pending: dict[bytes, list[Deferred[bool]]] = {}

    def _refuse(self, message: str) -> Unauthorized:
        return Unauthorized(message, (self.challenge,))

    def authenticate(self, credentials: bytes) -> Deferred[Principal]:
        """The principal `credentials` (the part after ``Basic``) name; `Unauthorized`
        when malformed or wrong."""
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True)
        except (binascii.Error, ValueError):
            return _failed(self._refuse("malformed Basic credentials (not base64)"))
        raw_name, sep, password = decoded.partition(b":")
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        if not sep or not name:
            return _failed(self._refuse("malformed Basic credentials (expected name:password)"))
        stored = self.users.lookup(name)
        key = hmac.new(self._key, raw_name + b"\0" + password, hashlib.sha256).digest()
        now = self._clock.seconds()
        remembered = self._cache.get(key)
        if remembered is not None:
            same = stored is not None and hmac.compare_digest(remembered.stored, stored)
            if same and remembered.expires > now:
                self._cache.move_to_end(key)
                return succeed(Principal(name, method="basic"))
            del self._cache[key]
        if stored is None:
            # Unknown user: spend the same time on someone's hash, and refuse whatever it says.
            decoy = self.users.any_hash()
            verdict: Deferred[bool] = self._check(password, decoy) if decoy is not None else succeed(False)
            verdict.addCallback(lambda _: False)
        else:
            verdict = self._shared_check(key, password, stored)

        def decide(ok: bool) -> Principal:
            if not ok:
                raise self._refuse("invalid user name or password")
            if stored is not None:
                self._remember(key, _Remembered(name, stored, self._clock.seconds() + CACHE_TTL))
            return Principal(name, method="basic")

        return verdict.addCallback(decide)

    def _shared_check(self, key: bytes, password: bytes, stored: bytes) -> Deferred[bool]:
        waiters = self._pending.get(key)
        mine: Deferred[bool] = Deferred()
        if waiters is not None:
            waiters.append(mine)
            return mine
        waiters = self._pending[key] = [mine]

        def settle(result: bool | Failure) -> None:
            del self._pending[key]
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        self._check(password, stored).addBoth(settle)
        return mine

    def _remember(self, key: bytes, entry: _Remembered) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)


def _failed(error: Exception) -> Deferred[Principal]:
    d: Deferred[Principal] = Deferred()
    d.errback(Failure(error))
    return d
