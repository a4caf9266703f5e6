# -*- test-case-name: tests.unit.test_web_dispatch -*-
"""Klein's routes, dispatched without `KleinResource.render`'s per-request set-up.

The routes stay Klein's (``@app.route`` on `dicomrst.web.app.GatewayApp`, its werkzeug URL
map, its endpoints and error handlers, `Klein.execute_endpoint`); what this replaces is
the glue Klein runs for every request (issue 15, "cheaper requests").  Measured with
``python -m bench.http_requests`` that glue cost about as much as the rest of
twisted.web's own request handling:

* a werkzeug ``MapAdapter`` bound per request (the host IDNA-encoded, the URL parts
  re-joined and re-decoded), and a full match (~15 µs) even though most requests of a
  burst ask for the same few paths (``/aets/{aet}/studies``);
* closures and nested ``maybeDeferred`` calls, two ``notifyFinish`` Deferreds and an
  ``IKleinRequest`` adapter per request; Klein's error callback refers to itself (and
  werkzeug's matcher builds a recursive closure per match), so every request left a
  reference cycle behind: the request and its headers were freed only by the cyclic
  garbage collector.

`Routes.match` binds the map once and keeps recent successful matches by (method, path);
`Routes.render` runs the handler and its result through the same steps as
`KleinResource.render` (handle a coroutine's Deferred, cancel it when the client leaves
or the deadline passes, render an `IResource` or `IRenderable` result, pass failures to
the app's error handlers in order, write and finish), as a small object per request
with no cycle in it.  Not supported, because no route of the gateway uses them:
``IKleinRequest(request).mapper`` (``url_for``), branch routes, and Klein's
dependency-injection ``Response`` objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.python.failure import Failure
from twisted.web.iweb import IRenderable, IRequest
from twisted.web.resource import IResource, getChildForRequest
from twisted.web.template import renderElement
from werkzeug.exceptions import HTTPException
from werkzeug.routing import MapAdapter

from dicomrst.common.twisted_internals import request_disconnected
from dicomrst.logs import logger

log = logger("dicomrst.web")

#: Distinct (method, path) matches kept; past this the cache starts again.  Paths with
#: UIDs in them are all different, so the bound matters; a burst of searches reuses
#: a handful.
CACHE_SIZE = 512

#: Paths longer than this are matched every time (kept, 512 of them could hold megabytes).
CACHED_PATH_LENGTH = 512

#: A match: the endpoint and the path's values (shared between requests: read only).
Match = tuple[str, Mapping[str, Any]]


class _Rendered:
    """The result of a step that rendered into the request itself (an `IResource`)."""


RENDERED = _Rendered()


class Routes:
    """A Klein app's URL map, matched and dispatched (see the module docstring).

    :param app: the Klein app bound to its instance (``GatewayApp(...).app``).
    """

    def __init__(self, app: Klein) -> None:
        self.app = app
        # No host matching, no subdomains, strict slashes off: neither the host nor the
        # script name takes part in a match, so one adapter serves every request.
        self._adapter: MapAdapter = app.url_map.bind("")
        self._matches: dict[tuple[str, str], Match] = {}
        self._segments: dict[str, int] = {}

    def match(self, method: str, path_info: str) -> Match:
        """The endpoint and values of `path_info` (``/aets/PACS/studies``: decoded, after
        the base path) for `method`; werkzeug's `NotFound` or `MethodNotAllowed` when no
        route takes it (not cached: a miss is a 404 or 405, rare)."""
        key = (method, path_info)
        found = self._matches.get(key)
        if found is not None:
            return found
        endpoint, values = self._adapter.match(path_info, method=method)
        found = (str(endpoint), values)
        if len(path_info) <= CACHED_PATH_LENGTH:
            if len(self._matches) >= CACHE_SIZE:
                self._matches.clear()
            self._matches[key] = found
        return found

    def segment_count(self, endpoint: str) -> int:
        """How many path segments `endpoint`'s route consumes (Klein's route metadata)."""
        count = self._segments.get(endpoint)
        if count is None:
            count = self._segments[endpoint] = int(self.app.endpoints[endpoint].segment_count)  # type: ignore[attr-defined]  # set by Klein.route
        return count

    def render(self, request: IRequest) -> None:
        """Route `request` (its ``postpath`` after the base path), call the handler and
        answer with what it returns, as `KleinResource.render` would."""
        _Rendering(self, request).start()


class _Rendering:
    """One request through `Routes`: Klein's render steps as methods, not closures."""

    __slots__ = ("_request", "_routes")

    def __init__(self, routes: Routes, request: IRequest) -> None:
        self._routes = routes
        self._request = request

    def start(self) -> None:
        try:
            result = self._execute()
        except BaseException:
            # Not kept in a local: its traceback holds this frame (a reference cycle).
            self._settle(Failure())
            return
        # One callback for the usual ending (a result, rendered and written); a failure
        # takes Klein's chain of steps (`_recover`).  Four callbacks on every request's
        # Deferred were a few µs of a search's CPU (issue 15); a result that is already
        # here (not a Deferred) needs none.
        if isinstance(result, Deferred):
            result.addBoth(self._settle)
        else:
            self._settle(result)

    def _settle(self, result: object) -> None:
        if isinstance(result, Failure):
            self._recover(result)
            return
        try:
            processed = self._process(result)
        except BaseException:
            self._recover(Failure())
            return
        try:
            self._write(processed)
        except BaseException:
            self._write_failed(Failure())

    def _recover(self, failure: Failure) -> None:
        """Klein's steps for a failure: the app's error handlers in order, then the write."""
        d: Deferred[Any] = fail(failure)
        d.addErrback(self._failed, list(self._routes.app._error_handlers))
        d.addCallback(self._write)
        d.addErrback(self._write_failed)

    def _execute(self) -> object:
        request = self._request
        routes = self._routes
        postpath: list[bytes] = request.postpath
        path_info = b"/".join(postpath)
        if not path_info.startswith(b"/"):
            path_info = b"/" + path_info
        # GatewayRoot checked that the path is UTF-8 (and Klein would answer otherwise).
        endpoint, values = routes.match(request.method.decode("utf-8"), path_info.decode("utf-8"))
        count = routes.segment_count(endpoint)
        request.prepath.extend(postpath[:count])
        request.postpath = postpath[count:]
        result = routes.app.execute_endpoint(endpoint, request, **values)
        if isinstance(result, Deferred):
            # The client left, or the request's deadline passed (`RequestTimedOut`): the
            # handler lets go of what it holds (a pooled association) through
            # cancellation.  Registered after the handler ran, as Klein does, so the
            # handler's own notifyFinish waiters hear of it first.
            request.notifyFinish().addErrback(_cancel, result)  # type: ignore[attr-defined]  # twisted.web's Request
        return result

    @property
    def _finished(self) -> bool:
        """The response was finished, the client left, or the request's deadline passed
        before the response began (the site answers it): nobody to answer here.  What a
        notifyFinish Deferred would have said by now, read from the request instead of a
        Deferred per request (issue 15)."""
        request = self._request
        if getattr(request, "finished", False) or request_disconnected(request):  # type: ignore[arg-type]  # twisted.web's Request
            return True
        # GatewayRequest's: its deadline failed the notifyFinish waiters, then answers 504.
        return bool(getattr(request, "timed_out", False)) and not getattr(request, "startedWriting", False)

    # -- the result ----------------------------------------------------------------------

    def _process(self, result: object) -> object:
        if type(result) is bytes:
            # What most handlers return: asking zope.interface whether bytes provide an
            # interface goes through its builtin-type lookup, twice per request.
            return result
        request = self._request
        if IResource.providedBy(result):
            request.render(getChildForRequest(result, request))  # type: ignore[attr-defined]  # twisted.web's Request
            return RENDERED
        if IRenderable.providedBy(result):
            renderElement(request, result)
            return RENDERED
        return result

    def _failed(self, failure: Failure, handlers: list[Any]) -> Deferred[Any] | None:
        if self._finished:
            # Nobody to answer (Klein's rule too): a cancellation is how the handler was
            # told so, anything else is worth a line.
            if not failure.check(CancelledError):
                log.failure("Unhandled Error Processing Request.", failure)
            return None
        request = self._request
        while handlers:
            types, handler = handlers.pop(0)
            if failure.check(*types):
                try:
                    result = self._routes.app.execute_error_handler(handler, request, failure)
                except BaseException:
                    d: Deferred[Any] = fail(Failure())
                else:
                    d = result if isinstance(result, Deferred) else succeed(result)
                d.addCallback(self._process)
                return d.addErrback(self._failed, handlers)
        # No handler took it (the gateway's takes every Exception): Klein's defaults.
        error = failure.value
        if isinstance(error, HTTPException):
            request.setResponseCode(error.code)
            response = error.get_response({})
            for name, value in response.headers:
                request.setHeader(name.encode("utf-8"), value.encode("utf-8"))
            return succeed(b"".join(response.iter_encoded()))
        request.processingFailed(failure)  # type: ignore[attr-defined]  # twisted.web's Request
        return None

    def _write(self, result: object) -> None:
        if result is RENDERED:
            return
        request = self._request
        if isinstance(result, str):
            result = result.encode("utf-8")
        if isinstance(result, bytes):
            request.write(result)
        if not self._finished:
            request.finish()

    def _write_failed(self, failure: Failure) -> None:
        log.failure("Unhandled Error writing response", failure)


def _cancel(reason: Failure, d: Deferred[Any]) -> None:
    d.cancel()
