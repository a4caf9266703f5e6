"""The index (``index.url``): a searchable record of the instances that LOCAL and S3 AETs
hold, so QIDO-RS works on them and several gateway processes can share one archive.

A layer below the backends that use it (``backends/local``, ``backends/s3``) and above
``common``; it never imports the services (``qido``, ``wado``) nor the web layer: the
QIDO-RS parser runs before a backend is asked, and the index receives the C-FIND
identifier it built, as a PACS would.  `IIndex` and `IndexRecord` (``interfaces``) are the
contract; the SQLite and PostgreSQL implementations provide it.
"""
