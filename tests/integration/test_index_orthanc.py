"""The index against Orthanc's own QIDO-RS on the same instances (`tests.support.qido_data`:
pydicom's files, several modalities and character sets, and a generated study).

Each search is parsed by the gateway's QIDO-RS parser, answered by the index alone (no
gateway filtering after it) and shaped as the gateway shapes results
(`Target.result`); Orthanc is asked the same search over its DICOMweb plugin.  They
must find the same studies, series and instances, and agree on the values of the
attributes a response must carry (PS3.18 T10.6.3-3..5) wherever Orthanc has a value.
Orthanc's own limits (see ``test_qido_orthanc``): values needing percent-encoding cannot
be sent to it, so those searches are left to the unit tests.
"""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from pydicom.dataset import Dataset
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from dicomrst.common.dicomjson import encode_dataset
from dicomrst.index.database import SqlIndex, SqliteDatabase
from dicomrst.index.records import record_from_head
from dicomrst.qido.query import parse_query
from dicomrst.qido.target import Target
from tests.support import peers, qido_data
from tests.support.qido_orthanc import DEFAULTS, ORTHANC_RAW, query_string, resource, unique_keys

AET = "INDEXED"


def _target(path: str) -> Target:
    parts = path.strip("/").split("/")
    if parts == ["studies"]:
        return Target.studies()
    if parts == ["series"]:
        return Target.all_series()
    if parts == ["instances"]:
        return Target.all_instances()
    if len(parts) == 3 and parts[2] == "series":
        return Target.study_series(parts[1])
    if len(parts) == 3:
        return Target.study_instances(parts[1])
    return Target.study_series_instances(parts[1], parts[3])


class IndexAgainstOrthancTests(TestCase):
    timeout = 240

    async def test_searches_find_what_orthanc_finds(self) -> None:
        from twisted.internet import reactor

        # Answers in UTF-8: in its default Latin-1 Orthanc drops the characters Latin-1 lacks.
        orthanc = await peers.start_orthanc(self, aet="ORTHANC", extra_config={"DefaultEncoding": "Utf8"})
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        raw = Agent(reactor, pool=pool)
        directory = self.mktemp()
        os.makedirs(directory)
        index = SqlIndex(SqliteDatabase(reactor, os.path.join(directory, "index.sqlite")))
        await index.start()
        self.addCleanup(index.stop)
        data = qido_data.manifest()
        for instance in data.instances:
            answer = await orthanc.upload(instance.data)
            self.assertEqual(answer.get("Status"), "Success", answer)
            key = f"{instance.study}/{instance.series}/{instance.sop}.dcm"
            record = record_from_head(AET, key, "1", len(instance.data), instance.data, complete=True)
            assert record is not None
            await index.add(record)

        async def orthanc_search(path: str, params: dict[str, str]) -> list[dict[str, Any]]:
            url = orthanc.url + "/dicom-web" + path + query_string(params, safe=ORTHANC_RAW)
            response = await raw.request(
                b"GET", url.encode("ascii"), Headers({b"Accept": [b"application/dicom+json"]})
            )
            body = (await treq.content(response)).decode("utf-8")
            self.assertEqual(response.code, 200, f"Orthanc GET {url}: {body}")
            found: list[dict[str, Any]] = json.loads(body)
            return found

        async def index_search(path: str, params: dict[str, str]) -> list[dict[str, Any]]:
            target = _target(path)
            query = parse_query(target, {k: [v] for k, v in params.items()})
            results: list[Dataset] = []
            await index.find(AET, query.identifier, limit=None, offset=0, on_result=results.append)
            shaped = [target.result(r, query.identifier, "http://gw/aets/" + AET) for r in results]
            return [json.loads(encode_dataset(r)) for r in shaped]

        generated = data.generated[0]
        gen, gen_series = generated.study, generated.series
        uid_list = ",".join(sorted(data.studies(lambda i: i.label in ("ct", "us", "x1"))))
        series_list = ",".join(sorted(data.series(lambda i: i.label in ("mr", "generated-3-1"))))
        searches: list[tuple[str, dict[str, str]]] = [
            ("/studies", {}),
            ("/series", {}),
            ("/instances", {}),
            ("/studies", {"PatientID": "QIDO-DOE-1"}),
            ("/studies", {"PatientName": "Doe*"}),
            ("/studies", {"PatientName": "?oe*"}),
            ("/studies", {"PatientName": "smith^anna"}),
            ("/studies", {"StudyDate": "20200101"}),
            ("/studies", {"StudyDate": "20200101-20210704"}),
            ("/studies", {"StudyDate": "-20200101"}),
            ("/studies", {"StudyDate": "20221111-"}),
            ("/studies", {"StudyDate": "20200101", "StudyTime": "100000-130000"}),
            ("/studies", {"ModalitiesInStudy": "CT"}),
            ("/studies", {"ModalitiesInStudy": "MR"}),
            ("/studies", {"StudyInstanceUID": uid_list}),
            ("/studies", {"AccessionNumber": "ACC-nm"}),
            ("/studies", {"PatientID": "NO-SUCH-PATIENT"}),
            ("/series", {"Modality": "MR"}),
            ("/series", {"Modality": "NM", "PatientID": "QIDO-SMITH"}),
            ("/series", {"SeriesNumber": "2"}),
            ("/series", {"PatientName": "?oe*"}),
            ("/series", {"StudyDate": "20210704"}),
            ("/series", {"SeriesInstanceUID": series_list}),
            (f"/studies/{gen}/series", {}),
            (f"/studies/{gen}/series", {"Modality": "OT"}),
            (f"/studies/{gen}/series", {"SeriesNumber": "3"}),
            ("/instances", {"InstanceNumber": "3"}),
            ("/instances", {"PatientID": "QIDO-SMITH"}),
            ("/instances", {"Modality": "CT", "StudyDate": "20240101-"}),
            (f"/studies/{gen}/instances", {}),
            (f"/studies/{gen}/instances", {"Modality": "MR"}),
            (f"/studies/{gen}/series/{gen_series}/instances", {}),
            (f"/studies/{gen}/series/{gen_series}/instances", {"SOPInstanceUID": generated.sop}),
        ]
        compared = 0
        for path, params in searches:
            where = f"{path}{query_string(params, safe=ORTHANC_RAW)}"
            truth = await orthanc_search(path, params)
            ours = await index_search(path, params)
            self.assertEqual(unique_keys(ours, path), unique_keys(truth, path), where)
            self.assertEqual(len(ours), len(truth), f"{where}: duplicates")
            self.assertEqual(
                not truth, params.get("PatientID") == "NO-SUCH-PATIENT", f"{where}: matches nothing"
            )
            key = {"studies": "0020000D", "series": "0020000E", "instances": "00080018"}[resource(path)]
            theirs = {r[key]["Value"][0]: r for r in truth}
            for result in ours:
                other = theirs[result[key]["Value"][0]]
                for tag in DEFAULTS[resource(path)]:
                    if tag == "00081190" or "Value" not in other.get(tag, {}):
                        continue  # Orthanc's Retrieve URL is its own; a value it lacks is not a truth
                    mine = result.get(tag, {}).get("Value")
                    theirs_value = other[tag]["Value"]
                    if tag == "00080061":  # Modalities in Study: a set
                        mine, theirs_value = sorted(mine or []), sorted(theirs_value)
                    self.assertEqual(mine, theirs_value, f"{where}: {tag} of {result[key]['Value'][0]}")
                    compared += 1
        self.assertGreater(compared, 500)
