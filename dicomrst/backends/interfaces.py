"""Where backends plug in: the web layer talks to an AET only through IBackend."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface


class IBackend(Interface):
    """One configured AET (``aets[]``): a PACS reached over DIMSE, or an S3 bucket."""

    aet: str = Attribute("The AE title this backend is published under (``/aets/{aet}``).")
    kind: str = Attribute('"DIMSE" or "S3".')

    def echo() -> Deferred[float]:
        """Check the backend is alive; fire with the round trip in milliseconds.

        Errbacks with `dicomrst.errors.UpstreamError` (refused, rejected, aborted) or
        `dicomrst.errors.UpstreamTimeout`.
        """

    def stop() -> Deferred[None]:
        """Release every association or connection held; called once at shutdown."""
