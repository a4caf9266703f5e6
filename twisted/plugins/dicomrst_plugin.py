"""twistd plugin: ``twistd dicomrst --config PATH``.

`getPlugins` imports this module on every twistd run, so it imports nothing but
ServiceMaker; ``dicomrst.tap`` is imported only when the ``dicomrst`` subcommand is used.
Keep the name ``DicomRST``: dropin.cache records it, and a cache that outlives a rename
(one newer than this file) makes twistd report "Unknown command: dicomrst".
"""

from typing import Any

from twisted.application.service import ServiceMaker


class _GatewayMaker(ServiceMaker):
    """twistd reads `options` before anything imports ``dicomrst.tap`` (and pydicom):
    the place to defer the libraries pydicom only probes (`dicomrst.common.lazyimports`),
    for this subcommand alone."""

    @property
    def options(self) -> Any:
        from dicomrst.common.lazyimports import GATEWAY_DEFERRED, defer

        defer(GATEWAY_DEFERRED)
        return super().options


DicomRST = _GatewayMaker(
    "dicomrst",
    "dicomrst.tap",
    "DICOMweb gateway to DIMSE PACS and S3",
    "dicomrst",
)
