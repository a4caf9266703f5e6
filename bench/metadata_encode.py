"""Per-instance cost of WADO-RS metadata encoding on the benchmark CT (issue 15).

``python -m bench.metadata_encode [--oracle]``: the median over 5 runs of encoding 200
instances of `bench.data.ct_study` (20 slices of 512x512, cycled), in ms per instance;
``--oracle`` times the pydicom encoder the fast one is checked against.
"""

from __future__ import annotations

import statistics
import sys
import time

from bench.data import ct_study
from dicomrst.common.part10 import read_file_meta
from dicomrst.common.uids import EXPLICIT_VR_LE


def main() -> None:
    from dicomrst.wado import metadata

    encode = metadata.instance_metadata_json
    if "--oracle" in sys.argv:
        encode = getattr(metadata, "pydicom_metadata_json", encode)
    _, blobs = ct_study(20)
    datasets = []
    for blob in blobs:
        meta = read_file_meta(blob, True)
        assert meta is not None
        datasets.append(blob[meta.dataset_offset :])
    base = "http://gw/studies/1/series/2/instances/3/bulkdata"
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(200):
            encode(datasets[i % len(datasets)], EXPLICIT_VR_LE, base)
        runs.append((time.perf_counter() - start) / 200 * 1000)
    print(f"{statistics.median(runs):.3f} ms per instance (runs: {', '.join(f'{r:.3f}' for r in runs)})")


if __name__ == "__main__":
    main()
