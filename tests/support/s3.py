"""A bucket on moto's S3 server behind the gateway's S3 backend, for integration tests.

`s3_aet` is the gateway's ``aets[]`` entry for a bucket on a `peers.Moto` (AE title `AET`,
bucket `BUCKET` unless told otherwise; path or virtual-host style, static credentials or
anonymous, a key prefix, a concurrency); `upload` creates a bucket and puts objects in it with
boto3 (an S3 client independent of the gateway's), at the keys the backend reads (`key_of`:
``study/series/sop.dcm``); `big_study` is a study of large generated instances.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydicom.uid import generate_uid
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from tests.support import peers
from tests.support.pacs.datasets import get_instance
from tests.support.wado import Stored, fresh

BUCKET = "dicom-bucket"
AET = "S3AET"


def key_of(item: Stored, prefix: str = "") -> str:
    return f"{prefix}{item.study}/{item.series}/{item.sop}.dcm"


def upload(
    moto: peers.Moto, bucket: str, objects: dict[str, bytes], acl: str | None = None
) -> Deferred[None]:
    """Create `bucket` (if needed) and put `objects` (key -> bytes), with boto3 in threads."""

    def blocking() -> None:
        s3 = moto.boto3()
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket, **({"ACL": acl} if acl else {}))
        extra = {"ACL": acl} if acl else {}

        def put(item: tuple[str, bytes]) -> None:
            moto.boto3().put_object(Bucket=bucket, Key=item[0], Body=item[1], **extra)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, objects.items()))

    return deferToThread(blocking)


def s3_aet(
    moto: peers.Moto,
    *,
    aet: str = AET,
    bucket: str = BUCKET,
    style: str = "path",
    credentials: dict[str, Any] | None = None,
    prefix: str | None = None,
    concurrency: int | None = None,
    anonymous: bool = False,
) -> dict[str, Any]:
    endpoint = f"http://localhost:{moto.port}" if style == "vhost" else moto.url
    config: dict[str, Any] = {
        "aet": aet,
        "backend": "S3",
        "endpoint": endpoint,
        "endpoint-style": style,
        "bucket": bucket,
    }
    if not anonymous:
        config["credentials"] = credentials or {"access-key": moto.access_key, "secret-key": moto.secret_key}
    if prefix is not None:
        config["prefix"] = prefix
    if concurrency is not None:
        config["concurrency"] = concurrency
    return config


def big_study(n: int, rows: int = 512) -> list[Stored]:
    study, series = generate_uid(), generate_uid()
    return [fresh(get_instance(0, i, rows, rows), f"big{i}", study, series) for i in range(n)]
