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
from dicomrst.errors import UpstreamError
from dicomrst.ul.negotiation import AssociationRequest, ContextProposal

VERIFICATION_CONTEXT = ContextProposal(VERIFICATION)


class EchoFailed(UpstreamError):
    """The peer answered C-ECHO with a status other than Success."""


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


def echo_scu(
    reactor: IGatewayReactor,
    host: str,
    port: int,
    calling_aet: str,
    called_aet: str,
    timeout: float,
) -> Deferred[float]:
    """Associate, C-ECHO, release; fire with milliseconds from connect to C-ECHO-RSP."""
    return Deferred.fromCoroutine(_echo(reactor, host, port, calling_aet, called_aet, timeout))


async def _echo(
    reactor: IGatewayReactor, host: str, port: int, calling_aet: str, called_aet: str, timeout: float
) -> float:
    started = reactor.seconds()
    request = AssociationRequest(calling_aet, called_aet, (VERIFICATION_CONTEXT,))
    connection = await associate(reactor, host, port, request, timeout=timeout)
    try:
        assert connection.association is not None
        context = connection.association.context(VERIFICATION)
        assert context is not None  # we proposed only this one, and something was accepted
        rsp = await connection.request(
            context.context_id,
            commands.command(commands.C_ECHO_RQ, AffectedSOPClassUID=VERIFICATION),
            timeout=timeout,
        )
        elapsed_ms = (reactor.seconds() - started) * 1000
        status = rsp.command.number("Status")
        if status != commands.SUCCESS:
            raise EchoFailed(f"{called_aet} answered C-ECHO with status 0x{status:04X}")
    except BaseException:
        connection.abort("C-ECHO failed")
        raise
    try:
        await connection.release()
    except Exception:
        # The echo itself succeeded; a peer that fumbles the release is logged by the UL.
        pass
    return elapsed_ms
