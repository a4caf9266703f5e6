# -*- test-case-name: tests.integration.test_s3 -*-
"""STOW-RS into S3: one Part-10 object per instance, never a silent overwrite.

The object is hashed first, in a thread (SHA-256 of the whole, MD5 of the whole and of
each multipart part): the SHA-256 signs the single PUT and is stored as object metadata
(``x-amz-meta-sha256``), the MD5s go out as ``Content-MD5`` so S3 checks what it
received.  The write is conditional (``If-None-Match: *``, on the PUT or on
CompleteMultipartUpload); a key that exists already is compared with what we would write:
the same content is success (a client retrying a STOW), different content is
`FAILURE_CONFLICT`.  A HEAD first catches the common case cheaply and covers stores that
ignore the condition.  Bodies stream from the spooled file; nothing is held whole.

With an index (`dicomrst.index.interfaces.IIndex`), the object's head is read up to its
Pixel Data in the same thread as the digest (`record_from_stream`, as the reconcile scan
reads it; an object the index cannot read is refused before anything is written), and
once the object is stored its record (key with the prefix, the ETag S3 answered as stamp)
is added: the instance is reported stored only once the index has committed it.  If the
index fails, the object stays in the bucket (the reconcile scan indexes it later, a retry
finds the same content) and the instance is reported failed.
"""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET
from typing import BinaryIO, Protocol

import attrs
from twisted.internet.task import Cooperator
from twisted.internet.threads import deferToThreadPool
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer

from dicomrst.backends.s3.client import (
    S3_NS,
    UNSIGNED_PAYLOAD,
    S3Client,
    S3Error,
    S3Throttled,
    S3Unreachable,
)
from dicomrst.backends.values import (
    FAILURE_CANNOT_UNDERSTAND,
    FAILURE_CONFLICT,
    FAILURE_OUT_OF_RESOURCES,
    FAILURE_PROCESSING,
    SUCCESS,
    StoreOutcome,
    UploadedInstance,
)
from dicomrst.errors import ServiceUnavailable
from dicomrst.index.interfaces import IIndex, IndexRecord
from dicomrst.index.records import NotIndexable, record_from_stream
from dicomrst.logs import logger

log = logger("dicomrst.s3")

MULTIPART_THRESHOLD = 16 << 20
PART_SIZE = 16 << 20
SHA_HEADER = "x-amz-meta-sha256"
_READ = 1 << 20


@attrs.frozen
class Digest:
    sha256: str  # hex
    md5: bytes
    parts: tuple[tuple[int, int, bytes], ...] = ()  # (offset, length, md5) when multipart
    record: IndexRecord | None = attrs.field(default=None, eq=False, repr=False)


def digest_and_record(instance: UploadedInstance, part_size: int | None, aet: str | None) -> Digest:
    """Blocking (in a thread): `digest`, and with `aet` the record of the object's head
    (`NotIndexable` when the index cannot read it)."""
    d = digest(instance, part_size)
    if aet is None:
        return d
    with instance.open() as f:
        record, _ = record_from_stream(aet, f, instance.size)
    return attrs.evolve(d, record=record)


def digest(instance: UploadedInstance, part_size: int | None) -> Digest:
    """Blocking: read the object once (in a thread)."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    parts: list[tuple[int, int, bytes]] = []
    part = hashlib.md5()
    offset = start = 0
    with instance.open() as f:
        while True:
            want = _READ if part_size is None else min(_READ, start + part_size - offset)
            data = f.read(want)
            if not data:
                break
            sha.update(data)
            md5.update(data)
            offset += len(data)
            if part_size is not None:
                part.update(data)
                if offset - start == part_size:
                    parts.append((start, part_size, part.digest()))
                    part, start = hashlib.md5(), offset
    if part_size is not None and offset > start:
        parts.append((start, offset - start, part.digest()))
    return Digest(sha.hexdigest(), md5.digest(), tuple(parts))


class _Slice:
    """`length` bytes of an object from `offset` (read by FileBodyProducer)."""

    def __init__(self, instance: UploadedInstance, offset: int, length: int) -> None:
        self.file: BinaryIO = instance.open()
        self.file.seek(offset)
        self.remaining = length

    def read(self, size: int) -> bytes:
        data = self.file.read(min(size, self.remaining))
        self.remaining -= len(data)
        return data

    def close(self) -> None:
        self.file.close()


class _Readable(Protocol):
    """What FileBodyProducer reads a body from."""

    def read(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


def _producer(cooperator: Cooperator, source: _Readable, length: int) -> IBodyProducer:
    producer = FileBodyProducer(source, cooperator=cooperator)
    if producer.length == UNKNOWN_LENGTH:
        producer.length = length
    return producer


def object_key(prefix: str, instance: UploadedInstance) -> str:
    study, series = instance.study_instance_uid, instance.series_instance_uid
    return f"{prefix}{study}/{series}/{instance.sop_instance_uid}.dcm"


class Store:
    def __init__(
        self,
        client: S3Client,
        prefix: str,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
        *,
        index: IIndex | None = None,
        aet: str = "",
    ) -> None:
        self.client = client
        self.index = index
        self.aet = aet
        self.prefix = prefix
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        reactor = client.reactor
        self.cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work))

    async def store(self, instance: UploadedInstance) -> StoreOutcome:
        def outcome(status: int, reason: str = "") -> StoreOutcome:
            return StoreOutcome(instance.sop_class_uid, instance.sop_instance_uid, status, reason)

        if not instance.series_instance_uid:
            return outcome(FAILURE_CANNOT_UNDERSTAND, "no Series Instance UID")
        key = object_key(self.prefix, instance)
        multipart = instance.size > self.multipart_threshold
        try:
            reactor = self.client.reactor
            try:
                d = await deferToThreadPool(
                    reactor,
                    reactor.getThreadPool(),
                    digest_and_record,
                    instance,
                    self.part_size if multipart else None,
                    self.aet if self.index is not None else None,
                )
            except NotIndexable as e:
                why = f"not a readable DICOM data set: {e}"
                log.warn("instance {sop} refused: {why}", sop=instance.sop_instance_uid, why=why)
                return outcome(FAILURE_CANNOT_UNDERSTAND, why)
            existing = await self._head(key)
            if existing is None:
                try:
                    if multipart:
                        etag = await self._put_multipart(key, instance, d)
                    else:
                        etag = await self._put(key, instance, d)
                    log.info("stored {key} ({size} bytes)", key=key, size=instance.size)
                    return await self._indexed(outcome(SUCCESS), key, etag, instance, d)
                except S3Error as e:
                    if e.code != "PreconditionFailed":
                        raise
                existing = await self._head(key)  # written meanwhile by someone else
                if existing is None:
                    return outcome(FAILURE_PROCESSING, f"S3 refused the conditional write of {key}")
            if await self._same(key, existing, instance, d):
                etag = (existing.getRawHeaders("ETag") or [""])[0]
                return await self._indexed(
                    outcome(SUCCESS, "already stored with the same content"), key, etag, instance, d
                )
            log.warn("{key} exists with different content; not overwritten", key=key)
            return outcome(
                FAILURE_CONFLICT, "an instance with this SOP Instance UID is stored with different content"
            )
        except S3Unreachable as e:
            raise ServiceUnavailable(str(e), retry_after=5) from None
        except S3Throttled as e:
            return outcome(FAILURE_OUT_OF_RESOURCES, str(e))
        except S3Error as e:
            log.warn("cannot store {key}: {why}", key=key, why=str(e))
            return outcome(FAILURE_PROCESSING, str(e))

    async def _indexed(
        self, stored: StoreOutcome, key: str, etag: str, instance: UploadedInstance, d: Digest
    ) -> StoreOutcome:
        """`stored`, once the object's record is committed to the index (if any)."""
        if self.index is None or d.record is None:
            return stored
        # The ETag as S3 answered it, quotes included, as ListObjectsV2 lists it: the
        # reconcile scan then finds the object unchanged.
        record = attrs.evolve(d.record, key=key, stamp=etag.strip(), size=instance.size)
        try:
            await self.index.add(record)
        except Exception as e:
            log.warn("{key} stored but not indexed: {why}", key=key, why=str(e))
            why = f"stored, but not indexed: {e}"
            return StoreOutcome(stored.sop_class_uid, stored.sop_instance_uid, FAILURE_PROCESSING, why)
        return stored

    async def _head(self, key: str) -> Headers | None:
        try:
            response = await self.client.request("HEAD", key)
        except S3Error as e:
            if e.status == 404:
                return None
            raise
        await self.client.discard(response)
        headers: Headers = response.headers
        return headers

    async def _same(self, key: str, headers: Headers, instance: UploadedInstance, d: Digest) -> bool:
        def header(name: str) -> str | None:
            values = headers.getRawHeaders(name)
            return values[0].strip() if values else None

        stored_sha = header(SHA_HEADER)
        if stored_sha:
            return bool(stored_sha.lower() == d.sha256)
        length = header("Content-Length")
        if length is not None and int(length) != instance.size:
            return False
        etag = (header("ETag") or "").strip('"')
        if etag and "-" not in etag:
            return etag.lower() == d.md5.hex()
        # Written by another tool in parts: compare the content itself.
        response = await self.client.request("GET", key)
        body = await self.client.read_body(response)
        return hashlib.sha256(body).hexdigest() == d.sha256

    def _headers(self, d: Digest) -> dict[str, str]:
        return {"Content-Type": "application/dicom", SHA_HEADER: d.sha256}

    async def _put(self, key: str, instance: UploadedInstance, d: Digest) -> str:
        """PUT the object; its ETag."""
        headers = self._headers(d)
        headers["Content-MD5"] = base64.b64encode(d.md5).decode("ascii")
        headers["If-None-Match"] = "*"
        response = await self.client.request(
            "PUT",
            key,
            headers=headers,
            body=lambda: _producer(self.cooperator, instance.open(), instance.size),
            payload_hash=d.sha256,
        )
        await self.client.discard(response)
        etag: str = (response.headers.getRawHeaders("ETag") or [""])[0]
        return etag

    async def _put_multipart(self, key: str, instance: UploadedInstance, d: Digest) -> str:
        """Upload the object in parts; its ETag (from CompleteMultipartUpload's answer)."""
        response = await self.client.request("POST", key, query=[("uploads", "")], headers=self._headers(d))
        root = ET.fromstring(await self.client.read_body(response))
        upload_id = root.findtext(f"{S3_NS}UploadId") or root.findtext("UploadId")
        if not upload_id:
            raise S3Error(self.client.bucket, 200, "NoUploadId", "no UploadId in the answer", key)
        try:
            etags = []
            for number, (offset, length, md5) in enumerate(d.parts, start=1):

                def part(o: int = offset, n: int = length) -> IBodyProducer:
                    return _producer(self.cooperator, _Slice(instance, o, n), n)

                response = await self.client.request(
                    "PUT",
                    key,
                    query=[("partNumber", str(number)), ("uploadId", upload_id)],
                    headers={"Content-MD5": base64.b64encode(md5).decode("ascii")},
                    body=part,
                    payload_hash=UNSIGNED_PAYLOAD,
                )
                etags.append(response.headers.getRawHeaders("ETag", [""])[0])
                await self.client.discard(response)
            parts = "".join(
                f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
                for n, etag in enumerate(etags, start=1)
            )
            xml = f'<CompleteMultipartUpload xmlns="{S3_NS[1:-1]}">{parts}</CompleteMultipartUpload>'.encode()
            response = await self.client.request(
                "POST",
                key,
                query=[("uploadId", upload_id)],
                headers={"If-None-Match": "*", "Content-Type": "application/xml"},
                body=lambda: _producer(self.cooperator, _Bytes(xml), len(xml)),
                payload_hash=hashlib.sha256(xml).hexdigest(),
            )
            # CompleteMultipartUpload can fail with 200 and an error document.
            body = await self.client.read_body(response)
            if b"<Error>" in body[:200]:
                from dicomrst.backends.s3.client import parse_error

                code, message = parse_error(body, 200)
                raise S3Error(self.client.bucket, 200, code, message, key)
            try:
                done = ET.fromstring(body)
            except ET.ParseError:
                return ""
            return done.findtext(f"{S3_NS}ETag") or done.findtext("ETag") or ""
        except BaseException:
            try:
                query = [("uploadId", upload_id)]
                aborted = await self.client.request("DELETE", key, query=query, ok=(204, 200))
                await self.client.discard(aborted)
            except Exception as e:
                log.warn("cannot abort multipart upload of {key}: {why}", key=key, why=str(e))
            raise


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int) -> bytes:
        data, self.data = self.data[:size], self.data[size:]
        return data

    def close(self) -> None:
        pass
