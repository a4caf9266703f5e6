"""twistd plugin: ``twistd dicomrst --config PATH``.

`getPlugins` imports this module on every twistd run, so it imports nothing but
ServiceMaker; ``dicomrst.tap`` is imported only when the ``dicomrst`` subcommand is used.
Keep the name ``DicomRST``: dropin.cache records it, and a cache that outlives a rename
(one newer than this file) makes twistd report "Unknown command: dicomrst".
"""

from twisted.application.service import ServiceMaker

DicomRST = ServiceMaker(
    "dicomrst",
    "dicomrst.tap",
    "DICOMweb gateway to DIMSE PACS and S3",
    "dicomrst",
)
