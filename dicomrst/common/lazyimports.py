# -*- test-case-name: tests.unit.test_lazyimports -*-
"""Imports of a fixed list of libraries executed at their first use, not at ``import``.

pydicom imports numpy (pixel data) and requests (its test-data downloader) when it is
imported, only to record whether they are installed: about 16 MB of the idle gateway's
RSS for libraries that a LOCAL archive answering searches and retrieves never uses
(issue 15 item 4).  `defer` puts a finder first on `sys.meta_path` that answers an
``import numpy`` with a stand-in module whose first attribute access imports the real
one, through the import system (its module locks, its error on failure), and then
forwards to it.  So ``import numpy`` still fails at once when numpy is not installed,
and a numpy that is installed but cannot be imported raises `ImportError` naming it
when a feature first needs it.

Only ``twistd dicomrst`` calls `defer` (the plugin, before ``dicomrst.tap`` imports
pydicom); the library's own code never depends on it.  Why not
`importlib.util.LazyLoader`: in Python 3.11 every later ``import numpy`` reads the
module's ``__spec__``, which makes LazyLoader execute it at pydicom's second
``import numpy``; and its lazy module executes under its own lock, not the import
system's, so a thread importing ``numpy._core`` meanwhile (imagecodecs does at its
initialisation) could deadlock against it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
import types
from collections.abc import Iterable, Sequence
from typing import Any

#: What the gateway defers: probed by pydicom at import, used only by pixel work
#: (numpy) and pydicom's data downloader (requests).  Pillow cannot be on this list:
#: pydicom's pillow handler calls ``PIL.features.check_codec`` when imported.
GATEWAY_DEFERRED = ("numpy", "requests")

_lock = threading.Lock()


class _Stand:
    """What a stand-in module knows: its spec and, once imported, the real module."""

    __slots__ = ("module", "spec")

    def __init__(self, spec: importlib.machinery.ModuleSpec) -> None:
        self.spec = spec
        self.module: types.ModuleType | None = None


def _stand_of(stand_in: types.ModuleType) -> _Stand:
    stand: _Stand = object.__getattribute__(stand_in, "__dict__")["_deferred_stand"]
    return stand


class DeferredModule(types.ModuleType):
    """The module object bound by the imports made while its library was deferred."""

    def __getattribute__(self, name: str) -> Any:
        stand = _stand_of(self)
        if stand.module is None:
            # The import system reads __spec__ at every ``import x`` of a module in
            # sys.modules (is it still initialising?), `inspect.getmodule` the
            # __file__ of every module: neither is a use.
            if name == "__spec__":
                return stand.spec
            if name == "__name__":
                return stand.spec.name
            if name == "__file__" and stand.spec.has_location:
                return stand.spec.origin
        return getattr(_real(self, stand), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(_real(self, _stand_of(self)), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(_real(self, _stand_of(self)), name)

    def __repr__(self) -> str:
        stand = _stand_of(self)
        if stand.module is None:
            return f"<module {stand.spec.name!r} (deferred)>"
        return repr(stand.module)


def is_deferred(module: types.ModuleType) -> bool:
    """Whether `module` is a stand-in whose library has not been imported yet."""
    return isinstance(module, DeferredModule) and _stand_of(module).module is None


def _real(stand_in: DeferredModule, stand: _Stand) -> types.ModuleType:
    if stand.module is not None:
        return stand.module
    name = stand.spec.name
    with _lock:
        # From here on an ``import name`` anywhere imports the real module.
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
    try:
        module = importlib.import_module(name)
    except Exception as e:
        raise ImportError(f"{name} (imported at its first use) cannot be imported: {e}", name=name) from e
    stand.module = module
    return module


class _Loader(importlib.abc.Loader):
    def __init__(self, stand: _Stand) -> None:
        self._stand = stand

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        module.__dict__["_deferred_stand"] = self._stand
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # Once the import system has set the module's attributes, the stand-in takes over.
        module.__class__ = DeferredModule


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names or fullname in sys.modules:
            return None
        with _lock:
            deferring = self.names
            self.names = deferring - {fullname}  # once: the first use imports it for real
        if fullname not in deferring:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return spec  # not installed (ImportError now, as without us) or not plain source
        stand = _Stand(spec)
        return importlib.machinery.ModuleSpec(fullname, _Loader(stand), origin=spec.origin)


def defer(names: Iterable[str]) -> None:
    """Defer the execution of the top-level modules `names` not imported yet to their
    first use (each once; a module imported before this call is left as it is)."""
    waiting = [name for name in names if "." not in name and name not in sys.modules]
    if waiting:
        sys.meta_path.insert(0, _Finder(waiting))
