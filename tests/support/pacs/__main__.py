"""``python -m tests.support.pacs``: the pynetdicom PACS subprocess (see `tests.support.pacs.cli`)."""

import sys

from tests.support.pacs.cli import main

sys.exit(main())
