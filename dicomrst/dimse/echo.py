# -*- test-case-name: tests.unit.test_dimse -*-
"""C-ECHO (Verification, PS3.4 Annex A) as SCU and as SCP."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from dicomrst.common.interfaces import IDataSetConsumer
from dicomrst.common.reactor import IGatewayReactor
from dicomrst.common.uids import VERIFICATION
from dicomrst.dimse import commands
from dicomrst.dimse.client import associate
from dicomrst.dimse.connection import DimseConnection, IncomingMessage
from dicomrst.dimse.errors import AssociationIntact
from dicomrst.errors import UpstreamError
from dicomrst.ul.negotiation import AssociationRequest, ContextProposal

VERIFICATION_CONTEXT = ContextProposal(VERIFICATION)


class EchoFailed(AssociationIntact, UpstreamError):
    """The peer answered C-ECHO with a status other than Success (the association is fine)."""


class EchoSCP:
    """Answers every C-ECHO-RQ with Success."""

    def request_received(
        self, connection: DimseConnection, message: IncomingMessage
    ) -> IDataSetConsumer | None:
        rq = message.command
        connection.respond(
            message.context_id,
            commands.command(
                commands.C_ECHO_RSP,
                MessageIDBeingRespondedTo=rq.MessageID,
                AffectedSOPClassUID=rq.AffectedSOPClassUID if "AffectedSOPClassUID" in rq else VERIFICATION,
                Status=commands.SUCCESS,
            ),
        )
        return None


async def c_echo(connection: DimseConnection, *, aet: str, timeout: float) -> None:
    """One C-ECHO on an established association (a pooled one, for a health check).

    Raises `EchoFailed` for a status other than Success (the association is fine), the
    association's error if it ends first, `AssociationTimeout` after `timeout` s.
    """
    association = connection.association
    assert association is not None
    context = association.context(VERIFICATION)
    if context is None:
        raise UpstreamError(f"{aet} did not accept the Verification SOP class")
    rsp = await connection.request(
        context.context_id,
        commands.command(commands.C_ECHO_RQ, AffectedSOPClassUID=VERIFICATION),
        timeout=timeout,
    )
    status = rsp.command.number("Status")
    if status != commands.SUCCESS:
        raise EchoFailed(f"{aet} answered C-ECHO with status 0x{status:04X}")


def echo_scu(
    reactor: IGatewayReactor,
    host: str,
    port: int,
    calling_aet: str,
    called_aet: str,
    timeout: float,
) -> Deferred[float]:
    """Associate, C-ECHO, release; fire with milliseconds from connect to C-ECHO-RSP.

    A one-off association, for checking a peer from outside the gateway (the interop
    tests); the gateway's own health checks go through each PACS's pool
    (`dicomrst.backends.pacs.DimseBackend.echo`), so they count against `pool.size`.
    """
    return Deferred.fromCoroutine(_echo(reactor, host, port, calling_aet, called_aet, timeout))


async def _echo(
    reactor: IGatewayReactor, host: str, port: int, calling_aet: str, called_aet: str, timeout: float
) -> float:
    started = reactor.seconds()
    request = AssociationRequest(calling_aet, called_aet, (VERIFICATION_CONTEXT,))
    connection = await associate(reactor, host, port, request, timeout=timeout)
    try:
        await c_echo(connection, aet=called_aet, timeout=timeout)
        elapsed_ms = (reactor.seconds() - started) * 1000
    except BaseException:
        connection.abort("C-ECHO failed")
        raise
    try:
        await connection.release()
    except Exception:
        # The echo itself succeeded; a peer that fumbles the release is logged by the UL.
        pass
    return elapsed_ms
