"""``python -m dicomrst.diagrams [DIR]``: write the state diagrams from the transition tables.

Every explicit state machine of the gateway, as a Graphviz ``.dot`` file in
``docs/state-machines/`` (render with ``dot -Tsvg``).  Like `dicomrst.tap` this module
sits above every layer, and nothing imports it.  tests.unit.test_machines checks that
the committed files are what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dicomrst.dimse.find import FIND
from dicomrst.dimse.get import GET
from dicomrst.dimse.move import MOVE
from dicomrst.dimse.store import STORE
from dicomrst.ul import fsm
from dicomrst.wado.throttle import THROTTLE
from dicomrst.web.site import REQUEST

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "docs" / "state-machines"


def diagrams() -> dict[str, str]:
    """File name → Graphviz source, for every machine."""
    found = {"ul-ps3.8.dot": fsm.dot()}
    for machine in (FIND, GET, MOVE, STORE, THROTTLE, REQUEST):
        found[f"{machine.name}.dot"] = machine.dot()
    return found


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else DEFAULT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in diagrams().items():
        (directory / name).write_text(source, encoding="utf-8")
        print(directory / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
