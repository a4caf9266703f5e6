"""The instance cache (``server.cache``): retrieved instances kept on local disk, so a
viewer's frames, bulk data and rendered images of a recently retrieved series are served
without another retrieve.

A layer of its own between the services and the backends: it retrieves through
`dicomrst.backends.interfaces.IBackend` and tees the `IInstanceSink` of WADO-RS responses,
and the services (``wado/``, the web handlers) call it.  `InstanceCache` (``instances``)
is the API; ``store`` holds the files, ``sinks`` the sinks that write them.
"""

from dicomrst.cache.instances import DEFAULT_MAX_SIZE, DEFAULT_TTL, CacheError, InstanceCache
from dicomrst.cache.store import CachedInstance, CacheDirectoryError

__all__ = [
    "DEFAULT_MAX_SIZE",
    "DEFAULT_TTL",
    "CacheDirectoryError",
    "CacheError",
    "CachedInstance",
    "InstanceCache",
]
