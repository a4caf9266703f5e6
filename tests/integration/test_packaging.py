"""Packaging: the wheel and the source tree both carry the twistd plugin correctly.

``packages = find:`` silently drops ``twisted/plugins`` (no ``__init__.py`` there, on
purpose), and shipping a ``twisted/plugins/__init__.py`` would overwrite Twisted's own;
daphne shipped both kinds of regression before adding a test like this one (PR #562).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from twisted.trial import unittest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = "twisted/plugins/dicomrst_plugin.py"

# Build from a copy of the tree: pip builds in place, and setuptools' build/ directory
# keeps files deleted since the last build and puts them into the next wheel. Only
# tool output is left out; a stray dropin.cache or __init__.py is copied and caught.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "_trial_temp*", "node_modules"
)


def _build_wheel(work: Path) -> list[str]:
    """Build the project's wheel under `work`; return the names of the files in it."""
    src, out = work / "src", work / "wheelhouse"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCE)
    out.mkdir()
    command = [
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--disable-pip-version-check", "-w", str(out), str(src),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=work, check=False)
    wheels = list(out.glob("dicomrst-*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        hint = ""
        if "bdist_wheel" in result.stdout + result.stderr:
            hint = "\n(no bdist_wheel: install the test extra, which brings setuptools>=69 and wheel)"
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}, built {wheels}{hint}\n"
            f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        return wheel.namelist()


class WheelContentsTests(unittest.TestCase):
    """What ``pip wheel`` puts in the wheel. The wheel is built once for all tests."""

    timeout = 300
    _names: list[str] | None = None

    def names(self) -> list[str]:
        cls = type(self)
        if cls._names is None:
            work = Path(self.mktemp()).resolve()
            work.mkdir(parents=True)
            cls._names = _build_wheel(work)
        return cls._names

    def test_plugin_is_the_only_twisted_file(self) -> None:
        """Under twisted/ the wheel has our plugin module and nothing else."""
        names = self.names()
        self.assertEqual([n for n in names if n.startswith("twisted/plugins/")], [PLUGIN])
        self.assertNotIn("twisted/__init__.py", names)
        self.assertEqual([n for n in names if n.startswith("twisted/")], [PLUGIN])

    def test_no_dropin_cache(self) -> None:
        """The plugin cache is per installation; a shipped one would be stale."""
        self.assertEqual([n for n in self.names() if n.endswith("dropin.cache")], [])

    def test_py_typed(self) -> None:
        names = self.names()
        self.assertIn("dicomrst/py.typed", names)
        self.assertIn("dicomrst/__init__.py", names)

    def test_only_our_packages(self) -> None:
        """tests/, bench/, etc/ and bytecode stay out of the wheel."""
        tops = {n.split("/", 1)[0] for n in self.names()}
        tops = {t for t in tops if not t.endswith(".dist-info")}
        self.assertEqual(tops, {"dicomrst", "twisted"})
        self.assertEqual([n for n in self.names() if n.endswith((".pyc", ".pyo"))], [])


_DISCOVER = """
import json, sys
import twisted.plugins
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
found = [
    {"tapname": p.tapname, "module": p.module, "description": p.description}
    for p in getPlugins(IServiceMaker) if p.tapname == "dicomrst"
]
print(json.dumps({
    "found": found,
    "path": list(twisted.plugins.__path__),
    "imported": sorted(m for m in sys.modules if m == "dicomrst" or m.startswith("dicomrst.")),
}))
"""

_TWISTD_HELP = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


class SourceTreePluginTests(unittest.TestCase):
    """With the checkout on PYTHONPATH, Twisted finds the plugin in twisted/plugins/."""

    timeout = 300

    def run_python(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        cwd = Path(self.mktemp()).resolve()  # not the checkout: only PYTHONPATH may find it
        cwd.mkdir(parents=True)
        result = subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, check=False
        )
        if result.returncode != 0:
            self.fail(f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
        return result

    def test_get_plugins(self) -> None:
        report = json.loads(self.run_python("-c", _DISCOVER).stdout.splitlines()[-1])
        self.assertIn(str(ROOT / "twisted" / "plugins"), report["path"])
        self.assertTrue(report["found"], "no IServiceMaker with tapname 'dicomrst'")
        for plugin in report["found"]:
            self.assertEqual(plugin["module"], "dicomrst.tap")
            self.assertEqual(plugin["description"], "DICOMweb gateway to DIMSE PACS and S3")
        # Every twistd run imports every plugin module: ours must not import the package.
        self.assertEqual(report["imported"], [])

    def test_twistd_help_lists_dicomrst(self) -> None:
        out = self.run_python("-c", _TWISTD_HELP, "--help").stdout
        lines = [line.split() for line in out.splitlines()]
        self.assertIn("dicomrst", [words[0] for words in lines if words], out)
