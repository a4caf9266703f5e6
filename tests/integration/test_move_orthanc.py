"""C-MOVE retrieves against Orthanc: the gateway as a process retrieving from Orthanc 1.10 with
C-MOVE to its own listener, compared with the same retrieves over C-GET.

The in-memory tests of the C-MOVE operation, the registry and the listeners are
tests/unit/test_move.py.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.support import peers
from tests.support.datasets import assert_same_dataset
from tests.support.gateway import LISTENER_AET, start_gateway
from tests.support.wado import RetrieveTestCase, get_aet, instance_path, orthanc_data, parse_multipart


class OrthancMoveTests(TestCase):
    """The gateway as a process retrieving from Orthanc 1.10 with C-MOVE to its listener."""

    timeout = 180

    async def test_study_via_move_equals_via_get(self) -> None:
        # Orthanc must know the listener's address before it starts.
        dimse_port = peers.free_port()
        orthanc = await peers.start_orthanc(
            self, modalities={"GATEWAY": (LISTENER_AET, peers.LOCALHOST, dimse_port)}
        )
        data = orthanc_data()
        for group in data.values():
            for item in group:
                answer = await orthanc.upload(item.data)
                self.assertEqual(answer.get("Status"), "Success", answer)
        move = get_aet("ORTHANC", orthanc.host, orthanc.dicom_port)
        move["wado-rs"] = {"retrieve": "move", "receivers": [LISTENER_AET], "timeout": 20_000}
        get = get_aet("ORTHANCGET", orthanc.host, orthanc.dicom_port)
        gw = await start_gateway(self, [move, get], dimse_port=dimse_port)

        multi, mr = data["multi"], data["mr"][0]
        first_series = [i for i in multi if i.series == multi[0].series]
        one = multi[4]
        cases = [
            (multi, (multi[0].study, None, None)),
            ([mr], (mr.study, None, None)),  # stored in Implicit VR LE
            (first_series, (multi[0].study, multi[0].series, None)),
            ([one], (one.study, one.series, one.sop)),
        ]
        for items, path in cases:
            moved = await gw.get(instance_path("ORTHANC", *path))
            got = await gw.get(instance_path("ORTHANCGET", *path))
            self.assertEqual(moved.code, 200, f"{moved.body[:300]!r}\n{gw.log_tail()}")
            self.assertEqual(got.code, 200, f"{got.body[:300]!r}\n{gw.log_tail()}")
            moved_body = parse_multipart(moved.header("Content-Type"), moved.body)
            got_body = parse_multipart(got.header("Content-Type"), got.body)
            self.assertTrue(moved_body.closed)
            expected = [(i.study, i.series, i.sop) for i in items]
            RetrieveTestCase.assert_parts(self, moved_body.parts, "ORTHANC", expected)  # type: ignore[arg-type]
            by_sop = {p.location.rsplit("/", 1)[-1]: p for p in got_body.parts}
            self.assertEqual(sorted(by_sop), sorted(i.sop for i in items))
            for part in moved_body.parts:
                sop = part.location.rsplit("/", 1)[-1]
                assert_same_dataset(self, part.dataset(), by_sop[sop].dataset(), sop)
        # Every move's instances came in on the listener, from Orthanc.
        self.assertEqual(len(gw.log_lines(r"association acceptor .*calling=ORTHANC called=GWSCP")), 4)
        self.assertEqual(gw.log_lines("refused C-STORE"), [])
        # A study the PACS does not have is a 404, as over C-GET.
        response = await gw.get(instance_path("ORTHANC", "1.2.3.4.5.6"))
        self.assertEqual(response.code, 404, response.body)
