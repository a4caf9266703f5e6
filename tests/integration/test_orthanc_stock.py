"""What a new operator meets with a stock Orthanc 1.10: the gateway names the likely cause
and the fix, in the 502 body and in its log (issue 11).

A stock Orthanc refuses C-FIND, C-MOVE and C-GET from a calling AE title it does not know
(``DicomAlwaysAllowFind``/``Move``/``Get`` are false): it accepts the association and aborts
it when asked.  It answers a C-MOVE to a destination missing from ``DicomModalities`` with
0xC000, not A801.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.support import peers
from tests.support.gateway import LISTENER_AET, OUR_AET, pacs_aet, start_gateway
from tests.support.wado import instance_path, orthanc_data

# Orthanc 1.10's own defaults for what the test Orthanc otherwise allows every caller.
STOCK = {"DicomAlwaysAllowFind": False, "DicomAlwaysAllowGet": False, "DicomAlwaysAllowMove": False}


class StockOrthancTests(TestCase):
    timeout = 120

    async def test_unknown_calling_aet(self) -> None:
        orthanc = await peers.start_orthanc(self, extra_config=STOCK)
        item = orthanc_data()["multi"][0]
        self.assertEqual((await orthanc.upload(item.data)).get("Status"), "Success")
        find = pacs_aet("ORTHANC", orthanc.host, orthanc.dicom_port)
        find["wado-rs"] = {"retrieve": "get"}
        move = pacs_aet("ORTHANCMOVE", orthanc.host, orthanc.dicom_port)
        move["wado-rs"] = {"retrieve": "move", "receivers": [LISTENER_AET]}
        gw = await start_gateway(self, [find, move])

        # C-ECHO is allowed to anyone: the health check passes.
        self.assertEqual((await gw.get("/aets/ORTHANC")).code, 200)
        cases = [
            ("/aets/ORTHANC/studies", "C-FIND", "DicomAlwaysAllowFind"),
            (instance_path("ORTHANC", item.study), "C-GET", "DicomAlwaysAllowGet"),
            (instance_path("ORTHANCMOVE", item.study), "C-MOVE", "DicomAlwaysAllowMove"),
        ]
        for path, operation, key in cases:
            response = await gw.get(path)
            self.assertEqual(response.code, 502, f"{path}: {response.body!r}\n{gw.log_tail()}")
            error = response.json()["error"]
            for text in (
                f"aborted the association when asked for {operation}",
                f"does not accept our AE title '{OUR_AET}' (server.aet)",
                f"{key}: true",
            ):
                self.assertIn(text, error, path)
            self.assertTrue(
                gw.log_lines(rf"dicomrst.pacs#warn\] .*when asked for {operation}"), gw.log_tail()
            )

    async def test_unregistered_move_destination(self) -> None:
        orthanc = await peers.start_orthanc(self)  # allows unknown callers, knows no destination
        item = orthanc_data()["multi"][0]
        self.assertEqual((await orthanc.upload(item.data)).get("Status"), "Success")
        move = pacs_aet("ORTHANC", orthanc.host, orthanc.dicom_port)
        move["wado-rs"] = {"retrieve": "move", "receivers": [LISTENER_AET]}
        gw = await start_gateway(self, [move])
        response = await gw.get(instance_path("ORTHANC", item.study))
        self.assertEqual(response.code, 502, f"{response.body!r}\n{gw.log_tail()}")
        error = response.json()["error"]
        for text in (
            "status 0xC000",
            f"most likely does not know the move destination '{LISTENER_AET}'",
            "DicomModalities",
            "wado-rs.retrieve: get",
        ):
            self.assertIn(text, error)
        self.assertTrue(gw.log_lines(r"dicomrst.pacs#warn\] ORTHANC: .*move destination"), gw.log_tail())
        # A study it does not have is still a 404.
        self.assertEqual((await gw.get(instance_path("ORTHANC", "1.2.3.4.5.6"))).code, 404)
