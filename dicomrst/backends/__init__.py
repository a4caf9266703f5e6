"""Backends: what serves an AET (``aets[]``).  The web and service layers see them only
through `dicomrst.backends.interfaces.IBackend`.

* `interfaces`: `IBackend` (search, retrieve, store, echo, what a retrieve may deliver,
  how many stores at once).
* `values`: `UploadedInstance` and `StoreOutcome`, what STOW-RS and a backend exchange.
* `pacs`: a PACS over DIMSE, through one association pool (`DimseBackend`).
* `s3`: an S3-compatible bucket, on the reactor (`S3Backend`).
"""
