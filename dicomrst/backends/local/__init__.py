"""The LOCAL backend: an AET served from a directory of Part-10 files (S3's layout)."""

from dicomrst.backends.local.backend import LocalArchiveError, LocalBackend

__all__ = ["LocalArchiveError", "LocalBackend"]
