"""Where a QIDO-RS study search spends its CPU per C-FIND match (issue 15), in µs.

``python -m bench.qido_encode``: 200 study-level matches shaped like Orthanc's (18
attributes, Latin-1 text), each taken as the gateway takes it today — `decode_identifier`
(pydicom, every element converted, in the DIMSE backend), `Query.accepts`,
`Target.result`, `encode_dataset` (DICOM JSON) — and, for comparison, the raw walk of
`dicomrst.common.rawjson` over the same bytes (with its cache of attributes, and cold).
Median of 5 runs of CPU (process) time, per syntax.
"""

from __future__ import annotations

import statistics
import time

from pydicom.dataset import Dataset

from dicomrst.common.dicomjson import encode_dataset
from dicomrst.common.identifiers import decode_identifier, encode_identifier
from dicomrst.common.rawjson import clear_cache, metadata_json
from dicomrst.common.uids import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from dicomrst.qido.query import parse_query
from dicomrst.qido.target import Target


def match(i: int) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate = "20240105"
    ds.StudyTime = "101530.123"
    ds.AccessionNumber = f"ACC{i:05d}"
    ds.QueryRetrieveLevel = "STUDY"
    ds.RetrieveAETitle = "ORTHANC"
    ds.InstanceAvailability = "ONLINE"
    ds.ModalitiesInStudy = ["CT", "SR"]
    ds.ReferringPhysicianName = "Smith^John"
    ds.StudyDescription = "CT Thorax mit KM"
    ds.PatientName = f"Müller^Hans{i}"
    ds.PatientID = "PAT001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.{10**20 + i}"
    ds.StudyID = "1"
    ds.NumberOfStudyRelatedSeries = 3
    ds.NumberOfStudyRelatedInstances = 412
    return ds


def main() -> None:
    target = Target.studies()
    query = parse_query(target, {"PatientID": ["PAT001"], "includefield": ["StudyDescription"]})
    service = "http://gw/aets/PACS"
    for syntax in (IMPLICIT_VR_LE, EXPLICIT_VR_LE):
        implicit = syntax == IMPLICIT_VR_LE
        raws = [encode_identifier(match(i), syntax) for i in range(200)]
        steps = ("decode", "accepts", "result", "encode", "raw walk", "raw walk cold")
        runs: dict[str, list[float]] = {step: [] for step in steps}
        for _ in range(5):
            spent = dict.fromkeys(steps, 0.0)
            for raw in raws:
                t0 = time.process_time()
                ds = decode_identifier(raw, syntax)
                t1 = time.process_time()
                query.accepts(ds)
                t2 = time.process_time()
                result = target.result(ds, query.identifier, service)
                t3 = time.process_time()
                encode_dataset(result)
                t4 = time.process_time()
                metadata_json(raw, implicit=implicit, bulk_base="-", threshold=1 << 30)
                t5 = time.process_time()
                clear_cache()
                metadata_json(raw, implicit=implicit, bulk_base="-", threshold=1 << 30)
                t6 = time.process_time()
                marks = (t0, t1, t2, t3, t4, t5, t6)
                for i, step in enumerate(steps):
                    spent[step] += marks[i + 1] - marks[i]
            for step in steps:
                runs[step].append(spent[step] / len(raws) * 1e6)
        shown = ", ".join(f"{step} {statistics.median(runs[step]):.1f}" for step in steps)
        print(f"{'implicit' if implicit else 'explicit'}: {shown} (µs per match)")


if __name__ == "__main__":
    main()
