"""The multipart sink's hold on the response's transport (dicomrst.web.wado)."""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from dicomrst.common.walker import PEEK_LIMIT
from dicomrst.wado.negotiation import select_instance_media
from dicomrst.wado.sinks import PART_HOLD, RESPONSE_BUFFER, RESPONSE_SEND, MultipartSink
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
        # The first part goes out under the connection's own size; the following ones get
        # room for a whole CT slice.
        self.assertEqual(request.buffer_when_registered, default)
        self.assertEqual(transport.bufferSize, RESPONSE_BUFFER)
        self.assertGreaterEqual(RESPONSE_BUFFER, 512 * 512 * 2 + 4096)
        # The next request on a kept-alive connection starts under the default again.
        self.sink.finish()
        self.assertEqual(transport.bufferSize, default)

    def test_from_the_second_part_a_turn_sends_a_whole_slice(self) -> None:
        transport = FileDescriptor()
        default = transport.SEND_LIMIT
        self.assertLess(default, RESPONSE_SEND)
        request = Request(transport)
        self.send_one(request)
        self.assertEqual(transport.SEND_LIMIT, RESPONSE_SEND)
        self.assertGreaterEqual(RESPONSE_SEND, 512 * 512 * 2 + 4096)
        self.sink.finish()
        self.assertEqual(transport.SEND_LIMIT, default)

    def test_a_larger_buffer_is_left_alone(self) -> None:
        transport = FileDescriptor()
        transport.bufferSize = RESPONSE_BUFFER * 4
        request = Request(transport)
        self.send_one(request)
        self.assertEqual(transport.bufferSize, RESPONSE_BUFFER * 4)


class HeldPartTests(TestCase):
    def test_a_slice_goes_out_whole_before_its_store_is_answered(self) -> None:
        data = encode(instance("1.2.3", "1.2.3.4"))
        request = Request(FileDescriptor())
        sink = sink_for(request)
        part = sink.begin(CT_IMAGE_STORAGE, "1.2.3.4.5", EXPLICIT_VR_LE)
        part.dataReceived(data[:100])
        part.dataReceived(data[100:])
        # Held: the reads of the rest of the data set are not interleaved with sends.
        self.assertEqual((request.written, sink.started), ([], False))
        answered: list[bytes] = []
        part.done.addCallback(lambda _: answered.append(b"".join(request.written)))
        part.dataFinished()
        # Written (into the response's buffer) before the C-STORE-RSP is allowed out.
        self.assertTrue(answered[0].endswith(data))
        self.assertIn(b"Content-Location: http://gw/aets/PACS/studies/1.2.3/series/1.2.3.4/", answered[0])

    def test_a_part_larger_than_the_hold_goes_out_as_it_arrives(self) -> None:
        self.assertGreaterEqual(PART_HOLD, PEEK_LIMIT)  # the series is known by then
        data = encode(instance("1.2.3", "1.2.3.4"))
        request = Request(FileDescriptor())
        sink = sink_for(request)
        part = sink.begin(CT_IMAGE_STORAGE, "1.2.3.4.5", EXPLICIT_VR_LE)
        part.dataReceived(data)
        filler = b"\0" * (PART_HOLD // 2)
        part.dataReceived(filler)
        self.assertEqual(request.written, [])
        part.dataReceived(filler)
        body = b"".join(request.written)
        self.assertIn(b"/series/1.2.3.4/", body)
        self.assertTrue(body.endswith(data + filler + filler))
        part.dataReceived(b"tail")
        self.assertFalse(b"".join(request.written).endswith(b"tail"))  # held again
        part.dataFinished()
        self.assertTrue(b"".join(request.written).endswith(b"tail"))
        self.assertEqual(self.successResultOf(part.done), 0)


class BrokenPartTests(TestCase):
    def test_a_part_cut_off_mid_instance_keeps_the_body_from_ending_cleanly(self) -> None:
        from twisted.python.failure import Failure

        data = encode(instance("1.2.3", "1.2.3.4"))
        request = Request(FileDescriptor())
        sink = sink_for(request)
        part = sink.begin(CT_IMAGE_STORAGE, "1.2.3.4.5", EXPLICIT_VR_LE)
        part.dataReceived(data)
        part.dataReceived(b"\0" * PART_HOLD)
        self.assertTrue(request.written)  # the part's header and first bytes are out
        part.dataFailed(Failure(ConnectionError("sub-operation association aborted")))
        self.assertTrue(part.done.called)  # failed (the C-STORE-RSP says so)
        self.assertEqual((sink.dropped, sink.parts), (1, 0))

    def test_a_data_set_failing_before_anything_was_written_is_counted_lost(self) -> None:
        from twisted.python.failure import Failure

        request = Request(FileDescriptor())
        sink = sink_for(request)
        part = sink.begin(CT_IMAGE_STORAGE, "1.2.3.4.5", EXPLICIT_VR_LE)
        part.dataFailed(Failure(ConnectionError("sub-operation association aborted")))
        self.assertTrue(part.done.called)  # failed (the C-STORE-RSP says so)
        # Nothing of it is in the body, but it is missing from the study: the retrieve
        # must not end the body cleanly (a 502 if nothing was sent yet).
        self.assertEqual((sink.dropped, request.written), (1, []))

    def test_a_held_part_failing_midway_writes_nothing_and_is_counted_lost(self) -> None:
        from twisted.python.failure import Failure

        data = encode(instance("1.2.3", "1.2.3.4"))
        request = Request(FileDescriptor())
        sink = sink_for(request)
        part = sink.begin(CT_IMAGE_STORAGE, "1.2.3.4.5", EXPLICIT_VR_LE)
        part.dataReceived(data[: len(data) // 2])
        part.dataFailed(Failure(ConnectionError("sub-operation association aborted")))
        self.assertTrue(part.done.called)  # failed (the C-STORE-RSP says so)
        # Nothing of it is in the body, and it is counted lost: a PACS that reports the
        # failed sub-operation with a warning only must not get a body that ends cleanly.
        self.assertEqual((sink.dropped, request.written), (1, []))


# -- instances that cannot be served as asked: 406 before the response, never a silent cut ----

MPEG2 = "1.2.840.10008.1.2.4.100"  # video: no decoder turns it into Explicit VR LE
RLE = "1.2.840.10008.1.2.5"


class SynchronousThreads:
    """A reactor whose thread pool runs each call at once, on the test's thread."""

    def getThreadPool(self) -> SynchronousThreads:
        return self

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        from twisted.python.failure import Failure

        try:
            result = f(*args, **kwargs)
        except Exception as e:
            on_result(False, Failure(e))
        else:
            on_result(True, result)

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class FakeBackend:
    """Delivers instances (sop uid, syntax, data set bytes) to the sink as a retrieve
    does: a refused instance is skipped, the rest written."""

    aet = "PACS"

    def __init__(self, instances: list[tuple[str, str, bytes]]) -> None:
        self.instances = instances
        self.refused: list[str] = []

    def retrieve(self, study: str, series: Any, instance: Any, *, sink: Any) -> Any:
        from twisted.internet.defer import succeed

        for uid, syntax, data in self.instances:
            try:
                part = sink.begin(CT_IMAGE_STORAGE, uid, syntax)
            except Exception:
                self.refused.append(uid)
                continue
            part.done.addErrback(lambda _: None)  # the source reports the instance failed
            part.dataReceived(data)
            part.dataFinished()
        return succeed(len(self.instances))


def broken_rle() -> bytes:
    from pydicom.encaps import encapsulate

    ds = instance("1.2.3", "1.2.3.4")
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsStored, ds.HighBit = 8, 8, 1, 16, 15
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([b"\x01\x00\x00\x00" + b"\x00" * 60])  # an RLE header, no segments
    ds["PixelData"].VR = "OB"
    return encode(ds)


class UnservableTests(TestCase):
    def sink(self, accept: str | None, reactor: Any = None) -> tuple[MultipartSink, Request, list[str]]:
        aborted: list[str] = []
        request = Request(FileDescriptor())
        sink = MultipartSink(
            request,
            reactor if reactor is not None else Clock(),
            select_instance_media(accept, None),
            "http://gw/aets/PACS",
            "1.2.3",
            None,
            abort=aborted.append,
        )
        return sink, request, aborted

    def send(self, sink: MultipartSink, backend: FakeBackend) -> Any:
        from twisted.internet.defer import Deferred

        from dicomrst.wado import retrieve

        return Deferred.fromCoroutine(retrieve.send(backend, sink, "1.2.3"))  # type: ignore[arg-type]

    def test_known_before_the_response_is_406_and_nothing_goes_out(self) -> None:
        from dicomrst.errors import NotAcceptable

        sink, request, aborted = self.sink(None)  # Explicit VR LE only
        good = encode(instance("1.2.3", "1.2.3.4"))
        backend = FakeBackend([("1.9.1", MPEG2, b"video"), ("1.9.2", EXPLICIT_VR_LE, good)])
        failure = self.failureResultOf(self.send(sink, backend), NotAcceptable)
        message = str(failure.value)
        self.assertIn("1.9.1", message)
        self.assertIn(f"transfer-syntax={MPEG2}", message)  # how to get it
        # The second instance is refused too: a 200 without the first would claim the
        # whole study.
        self.assertEqual(backend.refused, ["1.9.1", "1.9.2"])
        self.assertEqual((request.written, aborted), ([], []))

    def test_accepted_as_stored_goes_out_as_stored(self) -> None:
        sink, request, aborted = self.sink('multipart/related; type="application/dicom"; transfer-syntax=*')
        backend = FakeBackend([("1.9.1", MPEG2, b"video-bytes")])
        self.assertTrue(self.successResultOf(self.send(sink, backend)))
        body = b"".join(request.written)
        self.assertIn(f"transfer-syntax={MPEG2}".encode(), body)
        self.assertIn(b"video-bytes", body)
        self.assertEqual(aborted, [])

    def test_known_only_after_the_response_started_cuts_it_off_after_the_rest(self) -> None:
        sink, request, aborted = self.sink(None)
        good = encode(instance("1.2.3", "1.2.3.4"))
        backend = FakeBackend(
            [("1.9.1", EXPLICIT_VR_LE, good), ("1.9.2", MPEG2, b"video"), ("1.9.3", EXPLICIT_VR_LE, good)]
        )
        self.assertFalse(self.successResultOf(self.send(sink, backend)))
        self.assertEqual(backend.refused, ["1.9.2"])
        self.assertEqual(sink.parts, 2)  # the instances after it still went out
        self.assertEqual(aborted, ["error"])  # then the body was cut off: no closing delimiter
        self.assertNotIn(sink.writer.close(), request.written)

    def test_a_decoding_failure_falls_back_to_the_stored_syntax(self) -> None:
        accept = (
            'multipart/related; type="application/dicom", '
            'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5'
        )
        sink, request, _aborted = self.sink(accept, SynchronousThreads())
        data = broken_rle()
        backend = FakeBackend([("1.9.1", RLE, data)])
        self.assertTrue(self.successResultOf(self.send(sink, backend)))  # decoding was tried first
        body = b"".join(request.written)
        self.assertIn(f"transfer-syntax={RLE}".encode(), body)
        self.assertIn(data, body)

    def test_a_decoding_failure_not_accepted_as_stored_is_406(self) -> None:
        from dicomrst.errors import NotAcceptable

        sink, request, _aborted = self.sink(None, SynchronousThreads())
        backend = FakeBackend([("1.9.1", RLE, broken_rle())])
        failure = self.failureResultOf(self.send(sink, backend), NotAcceptable)
        self.assertIn("cannot be decoded", str(failure.value))
        self.assertEqual(request.written, [])

    def test_a_decodable_instance_is_decoded(self) -> None:
        import numpy as np
        from pydicom.dataset import FileMetaDataset

        ds = instance("1.2.3", "1.2.3.4")
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsStored, ds.HighBit = 4, 4, 1, 16, 15
        ds.PhotometricInterpretation, ds.PixelRepresentation = "MONOCHROME2", 0
        pixels = np.arange(16, dtype="<u2").reshape(4, 4)
        ds.PixelData = pixels.tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_LE
        ds.compress(RLE, encoding_plugin="pydicom")
        data = encode(ds)
        sink, request, _aborted = self.sink(None, SynchronousThreads())
        self.assertTrue(self.successResultOf(self.send(sink, FakeBackend([("1.9.1", RLE, data)]))))
        body = b"".join(request.written)
        self.assertIn(f"transfer-syntax={EXPLICIT_VR_LE}".encode(), body)
        self.assertIn(pixels.tobytes(), body)

    def test_an_instance_under_way_when_another_is_refused_does_not_start_the_response(self) -> None:
        # Two sub-operation associations of one C-MOVE may deliver at once.
        sink, request, aborted = self.sink(None)
        good = encode(instance("1.2.3", "1.2.3.4"))
        under_way = sink.begin(CT_IMAGE_STORAGE, "1.9.1", EXPLICIT_VR_LE)
        under_way.dataReceived(good[:10])  # still peeking for the series UID: nothing out yet
        from dicomrst.errors import NotAcceptable

        self.assertRaises(NotAcceptable, sink.begin, CT_IMAGE_STORAGE, "1.9.2", MPEG2)
        under_way.dataReceived(good[10:])
        under_way.dataFinished()
        self.assertEqual(self.successResultOf(under_way.done), 0xA700)  # not delivered
        self.assertEqual((request.written, aborted, sink.started), ([], [], False))
