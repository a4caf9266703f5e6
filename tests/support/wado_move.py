"""The gateway retrieving by C-MOVE to its own listener, for integration tests.

`move_aet` is an ``aets[]`` entry whose WADO-RS retrieves are C-MOVEs to the gateway's
STORE-SCP listener (`LISTENER_AET`); `start_orthanc_for_move` starts Orthanc (`ORTHANC_AET`)
knowing that listener, on a port chosen first, as a C-MOVE destination, and
`start_move_gateway` the gateway retrieving from it, which at cleanup checks that Orthanc did
call the listener. `MOVE_PACS_AET` is the AE title the tests give the pynetdicom PACS run
with its move-* profiles.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

from tests.support import peers
from tests.support.gateway import LISTENER_AET, Gateway, eventually, pacs_aet, start_gateway

MOVE_PACS_AET = "PYMOVE"
ORTHANC_AET = "ORTHANC"


def move_aet(
    aet: str,
    host: str,
    port: int,
    wado_timeout_ms: int = 20_000,
    pool_size: int | None = None,
    mode: str = "concurrent",
    senders: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """An `aets[]` entry that retrieves by C-MOVE to the gateway's own listener."""
    config = pacs_aet(aet, host, port, timeout_ms=5000)
    config["wado-rs"] = {
        "retrieve": "move",
        "receivers": [LISTENER_AET],
        "mode": mode,
        "timeout": wado_timeout_ms,
    }
    if senders is not None:
        config["wado-rs"]["senders"] = senders
    if pool_size is not None:
        config["pool"]["size"] = pool_size
    return config


async def start_orthanc_for_move(case: TestCase) -> tuple[peers.Orthanc, int]:
    """Orthanc knowing the gateway's listener (on a port chosen now) as a C-MOVE destination."""
    listener_port = peers.free_port()
    orthanc = await peers.start_orthanc(
        case, ORTHANC_AET, modalities={"dicomrst": (LISTENER_AET, peers.LOCALHOST, listener_port)}
    )
    return orthanc, listener_port


async def start_move_gateway(
    case: TestCase,
    orthanc: peers.Orthanc,
    listener_port: int,
    uncompressed: bool = True,
    mode: str = "concurrent",
) -> Gateway:
    gw = await start_gateway(
        case,
        [move_aet(ORTHANC_AET, orthanc.host, orthanc.dicom_port, mode=mode)],
        dimse_port=listener_port,
        listener={"uncompressed": uncompressed},
    )

    async def moved() -> None:
        # The instances came by C-MOVE: Orthanc called our listener (runs before the gateway
        # stops: cleanups run last-in first-out).
        pattern = rf"association acceptor .*calling={ORTHANC_AET} called={LISTENER_AET} "
        await eventually(lambda: bool(gw.log_lines(pattern)))
        case.assertTrue(
            gw.log_lines(pattern), f"no association from Orthanc to our listener\n{gw.log_tail()}"
        )

    case.addCleanup(moved)
    return gw
