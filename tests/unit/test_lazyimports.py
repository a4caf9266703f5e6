"""dicomrst.common.lazyimports: a deferred library runs at its first use, once, and a
library that cannot be imported says so when it is used.  Each case runs in a fresh
interpreter: the finder is process-wide."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_PACKAGES = {
    # Counts its executions in a file, so a second one (or one per thread) shows.
    "lazyok/__init__.py": (
        "import os\n"
        "with open(os.environ['RUNS'], 'a') as f:\n"
        "    f.write('x')\n"
        "VALUE = 42\n"
    ),
    "lazyok/sub.py": "from lazyok import VALUE\nDOUBLE = 2 * VALUE\n",
    "lazybroken/__init__.py": "raise RuntimeError('boom at import')\n",
}


class DeferTests(SynchronousTestCase):
    def run_script(self, body: str) -> str:
        directory = os.path.abspath(self.mktemp())
        for path, text in _PACKAGES.items():
            os.makedirs(os.path.join(directory, os.path.dirname(path)), exist_ok=True)
            with open(os.path.join(directory, path), "w") as f:
                f.write(text)
        runs = os.path.join(directory, "runs")
        script = "from dicomrst.common.lazyimports import defer, is_deferred\n" + textwrap.dedent(body)
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=directory,
            env={**os.environ, "PYTHONPATH": os.pathsep.join((ROOT, directory)), "RUNS": runs},
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        return done.stdout

    def test_runs_at_first_use_once(self) -> None:
        out = self.run_script("""
            import os, sys
            defer(["lazyok"])
            import lazyok
            import lazyok as again  # the import system reads __spec__: not a use
            print(is_deferred(lazyok), again is lazyok, os.path.exists(os.environ["RUNS"]))
            print(lazyok.VALUE, is_deferred(lazyok), type(sys.modules["lazyok"]).__name__)
            import lazyok.sub
            print(lazyok.sub.DOUBLE, open(os.environ["RUNS"]).read())
        """)
        self.assertEqual(out.split("\n"), ["True True False", "42 False module", "84 x", ""])

    def test_threads_racing_at_first_use_run_it_once(self) -> None:
        out = self.run_script("""
            import os, threading
            defer(["lazyok"])
            import lazyok
            start = threading.Barrier(8)
            seen = []
            def use():
                start.wait()
                seen.append(lazyok.VALUE)
            threads = [threading.Thread(target=use) for _ in range(8)]
            for t in threads: t.start()
            for t in threads: t.join()
            print(seen == [42] * 8, open(os.environ["RUNS"]).read())
        """)
        self.assertEqual(out, "True x\n")

    def test_not_installed_fails_at_import_as_before(self) -> None:
        out = self.run_script("""
            defer(["lazyabsent"])
            try:
                import lazyabsent
            except ModuleNotFoundError as e:
                print(e.name)
        """)
        self.assertEqual(out, "lazyabsent\n")

    def test_a_library_that_fails_says_so_at_each_use(self) -> None:
        out = self.run_script("""
            defer(["lazybroken"])
            import lazybroken
            for _ in range(2):
                try:
                    lazybroken.anything
                except ImportError as e:
                    print(e.name, "|", e, "|", repr(e.__cause__))
        """)
        line = "lazybroken | lazybroken (imported at its first use) cannot be imported: boom at import | " \
               "RuntimeError('boom at import')"
        self.assertEqual(out.split("\n"), [line, line, ""])

    def test_a_module_imported_before_is_left_alone(self) -> None:
        out = self.run_script("""
            import os, sys
            import lazyok
            defer(["lazyok"])
            import lazyok
            print(type(sys.modules["lazyok"]).__name__, is_deferred(lazyok))
        """)
        self.assertEqual(out, "module False\n")
