"""WADO-RS of the ~105 MB CT study from S3 (moto's server, signatures checked) through dicomrst,
against a plain concurrent download of the same keys with boto3 (issue 6), same server, same run.

The boto3 anchor lists the study's keys (ListObjectsV2) and GETs every object with a thread
pool as wide as the AET's ``concurrency``, reading each body to the end and throwing it away;
the gateway does the same listing and GETs and streams the parts to curl, which writes to
/dev/null. Runs alternate between the two; medians (min, max) and the gateway's peak RSS."""

from __future__ import annotations

import io
import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from pydicom import dcmread

from bench import data, peers
from bench.stats import row
from bench.wado import _curl

BUCKET = "bench-dicom"
REGION = "us-east-1"
CONCURRENCY = 32


def _client(url: str, key: str, secret: str, service: str = "s3") -> object:
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(max_pool_connections=CONCURRENCY, s3={"addressing_style": "path"}),
    )


def _enable_auth(url: str) -> tuple[str, str]:
    """An IAM user allowed everything; then moto checks every signature."""
    iam = _client(url, "setup", "setup", "iam")
    iam.create_user(UserName="bench")  # type: ignore[attr-defined]
    key = iam.create_access_key(UserName="bench")["AccessKey"]  # type: ignore[attr-defined]
    document = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    policy = iam.create_policy(PolicyName="all", PolicyDocument=json.dumps(document))  # type: ignore[attr-defined]
    iam.attach_user_policy(UserName="bench", PolicyArn=policy["Policy"]["Arn"])  # type: ignore[attr-defined]
    # Not form-encoded: moto reads the raw body as the count.
    request = urllib.request.Request(
        url + "/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request) as r:
        r.read()
    return key["AccessKeyId"], key["SecretAccessKey"]


def _boto3_download(s3: object, study: str) -> tuple[float, int]:
    """(seconds, bytes): list the study's keys, then GET them all, `CONCURRENCY` at a time."""
    t = time.perf_counter()
    keys: list[str] = []
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{study}/")  # type: ignore[attr-defined]
    for page in pages:
        keys += [item["Key"] for item in page.get("Contents", [])]

    def get(key: str) -> int:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]  # type: ignore[attr-defined]
        size = 0
        for chunk in iter(lambda: body.read(1 << 16), b""):
            size += len(chunk)
        return size

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        size = sum(pool.map(get, keys))
    return time.perf_counter() - t, size


def run(runs: int = 5, slices: int = 200) -> None:
    try:
        import boto3  # noqa: F401
        import moto  # noqa: F401
    except ImportError:
        sys.exit("bench s3: needs moto[server] (with boto3): pip install '.[test]'")
    work = peers.workdir()
    port = peers.free_port()
    url = f"http://127.0.0.1:{port}"
    server = peers.Process(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log=work / "moto.log"
    )
    gateway = None
    try:
        peers.wait_http(url + "/moto-api/")
        key, secret = _enable_auth(url)
        s3 = _client(url, key, secret)
        s3.create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        study, files = data.ct_study(slices)
        size_mb = sum(len(f) for f in files) / 1e6

        def put(body: bytes) -> None:
            ds = dcmread(io.BytesIO(body), stop_before_pixels=True)
            key = f"{study}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)  # type: ignore[attr-defined]

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, files))
        del files
        aet = {
            "aet": "S3BENCH",
            "backend": "S3",
            "endpoint": url,
            "endpoint-style": "path",
            "bucket": BUCKET,
            "concurrency": CONCURRENCY,
            "credentials": {"access-key": key, "secret-key": secret},
        }
        gateway = peers.Gateway(work, [aet])
        gw_url = f"{gateway.url}/aets/S3BENCH/studies/{study}"
        _curl(gw_url)  # warm: connections, imports
        _boto3_download(s3, study)
        gw, anchor_runs, ttfb = [], [], []
        for _ in range(runs):
            total, first, got = _curl(gw_url)
            if got < size_mb * 1e6:
                raise RuntimeError(f"gateway sent {got} bytes, less than the study")
            gw.append(total)
            ttfb.append(first)
            seconds, got = _boto3_download(s3, study)
            if got < size_mb * 1e6 * 0.99:
                raise RuntimeError(f"boto3 got {got} bytes")
            anchor_runs.append(seconds)
        anchor = sorted(anchor_runs)[len(anchor_runs) // 2]
        print(
            f"\nS3 (moto {moto_version()}, signatures checked): {slices} instances, {size_mb:.0f} MB, "
            f"concurrency {CONCURRENCY}, {runs} runs"
        )
        print(row("dicomrst WADO-RS from S3 (curl > /dev/null)", gw, "s", anchor, fmt="{:.3f}"))
        print(row("boto3 list + concurrent GETs (threads)", anchor_runs, "s", anchor, fmt="{:.3f}"))
        print(row("dicomrst throughput", [size_mb / t for t in gw], "MB/s", fmt="{:.0f}"))
        print(row("boto3 throughput", [size_mb / t for t in anchor_runs], "MB/s", fmt="{:.0f}"))
        print(row("dicomrst time to first byte", [t * 1000 for t in ttfb], "ms", fmt="{:.1f}"))
        print(
            f"  dicomrst speed relative to boto3 (boto3 time / dicomrst time, medians): "
            f"{anchor / sorted(gw)[len(gw) // 2]:.2f}x (target >= 0.9x)"
        )
        print(f"  dicomrst peak RSS after these runs: {peers.peak_rss_mb(gateway.pid):.0f} MB")
    finally:
        for process in (gateway, server):
            if process is not None:
                process.stop()


def moto_version() -> str:
    import moto

    return str(moto.__version__)
