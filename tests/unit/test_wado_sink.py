"""The multipart sink's hold on the response's transport (dicomrst.web.wado)."""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from dicomrst.wado.negotiation import select_instance_media
from dicomrst.wado.sinks import RESPONSE_BUFFER, MultipartSink
from tests.support.datasets import encode, instance

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


class Request:
    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.written: list[bytes] = []
        self.producer: Any = None
        self.buffer_when_registered = 0

    def setResponseCode(self, code: int) -> None:
        pass

    def setHeader(self, name: bytes, value: bytes) -> None:
        pass

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self.buffer_when_registered = self.transport.bufferSize

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)


def sink_for(request: Request) -> MultipartSink:
    return MultipartSink(
        request, Clock(), select_instance_media(None, None), "http://gw/aets/PACS", "1.2.3", None
    )


class ResponseBufferTests(TestCase):
    def send_one(self, request: Request) -> None:
        data = encode(instance("1.2.3", "1.2.3.4"))
        self.sink = sink_for(request)
        part = self.sink.begin(CT_IMAGE_STORAGE, "1.2.3.4.5", EXPLICIT_VR_LE)
        part.dataReceived(data)
        part.dataFinished()
        self.assertEqual(self.successResultOf(part.done), 0)

    def test_a_whole_slice_fits_before_the_association_is_paused(self) -> None:
        transport = FileDescriptor()
        default = transport.bufferSize  # Twisted's 64 KiB
        self.assertLess(default, RESPONSE_BUFFER)
        request = Request(transport)
        self.send_one(request)
        # The first part goes out under the default (a failure inside it must find the
        # status line sent); the following ones get room for a whole CT slice.
        self.assertEqual(request.buffer_when_registered, default)
        self.assertEqual(transport.bufferSize, RESPONSE_BUFFER)
        self.assertGreaterEqual(RESPONSE_BUFFER, 512 * 512 * 2 + 4096)
        # The next request on a kept-alive connection starts under the default again.
        self.sink.finish()
        self.assertEqual(transport.bufferSize, default)

    def test_a_larger_buffer_is_left_alone(self) -> None:
        transport = FileDescriptor()
        transport.bufferSize = RESPONSE_BUFFER * 4
        request = Request(transport)
        self.send_one(request)
        self.assertEqual(transport.bufferSize, RESPONSE_BUFFER * 4)


class BrokenPartTests(TestCase):
    def test_a_part_cut_off_mid_instance_keeps_the_body_from_ending_cleanly(self) -> None:
        from twisted.python.failure import Failure

        data = encode(instance("1.2.3", "1.2.3.4"))
        request = Request(FileDescriptor())
        sink = sink_for(request)
        part = sink.begin(CT_IMAGE_STORAGE, "1.2.3.4.5", EXPLICIT_VR_LE)
        part.dataReceived(data[: len(data) // 2])
        self.assertTrue(request.written)  # the part's header and first bytes are out
        part.dataFailed(Failure(ConnectionError("sub-operation association aborted")))
        self.assertTrue(part.done.called)  # failed (the C-STORE-RSP says so)
        self.assertEqual((sink.dropped, sink.parts), (1, 0))

    def test_a_data_set_failing_before_anything_was_written_leaves_the_body_whole(self) -> None:
        from twisted.python.failure import Failure

        request = Request(FileDescriptor())
        sink = sink_for(request)
        part = sink.begin(CT_IMAGE_STORAGE, "1.2.3.4.5", EXPLICIT_VR_LE)
        part.dataFailed(Failure(ConnectionError("sub-operation association aborted")))
        self.assertTrue(part.done.called)  # failed (the C-STORE-RSP says so)
        self.assertEqual((sink.dropped, request.written), (0, []))
