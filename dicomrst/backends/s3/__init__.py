"""The S3 backend: WADO-RS and STOW-RS against an S3-compatible bucket, on the reactor."""

from dicomrst.backends.s3.backend import S3Backend

__all__ = ["S3Backend"]
