"""Per-instance cost of WADO-RS metadata encoding on the benchmark CT (issue 15).

``python -m bench.metadata_encode [--oracle] [--cold]``: 5 runs, each encoding the 200
instances of a fresh `bench.data.ct_study` (512x512 slices, new UIDs every run, as a
viewer's series metadata); prints the median and each run in CPU ms per instance
(process time, so that other work on the machine does not count).
``--oracle`` times the pydicom encoder the fast one is checked against; ``--cold`` empties
the fast encoder's cache of attributes before every instance (no value seen before).
"""

from __future__ import annotations

import statistics
import sys
import time

from bench.data import ct_study
from dicomrst.common import rawjson
from dicomrst.common.part10 import read_file_meta
from dicomrst.common.uids import EXPLICIT_VR_LE
from dicomrst.wado import metadata

BASE = "http://gw/studies/1/series/2/instances/3/bulkdata"


def main() -> None:
    encode = metadata.pydicom_metadata_json if "--oracle" in sys.argv else metadata.instance_metadata_json
    cold = "--cold" in sys.argv
    runs = []
    for run in range(5):
        _, blobs = ct_study(200, seed=100 + run)
        datasets = []
        for blob in blobs:
            meta = read_file_meta(blob, True)
            assert meta is not None
            datasets.append(blob[meta.dataset_offset :])
        elapsed = 0.0
        for data in datasets:
            if cold:
                rawjson.clear_cache()
            start = time.process_time()
            encode(data, EXPLICIT_VR_LE, BASE)
            elapsed += time.process_time() - start
        runs.append(elapsed / len(datasets) * 1000)
    print(f"{statistics.median(runs):.3f} ms per instance (runs: {', '.join(f'{r:.3f}' for r in runs)})")


if __name__ == "__main__":
    main()
