"""The DIMSE backend: an AET served by a PACS, through one association pool.

* `dicomrst.backends.pacs.backend`: `DimseBackend` (C-ECHO, C-FIND, C-GET or C-MOVE).
* `dicomrst.backends.pacs.store`: STOW-RS instances C-STOREd over the pool.
"""

from dicomrst.backends.pacs.backend import POOL_CONTEXTS, DimseBackend

__all__ = ["POOL_CONTEXTS", "DimseBackend"]
