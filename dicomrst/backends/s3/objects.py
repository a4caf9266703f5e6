# -*- test-case-name: tests.unit.test_s3_parsing -*-
"""What the S3 backend reads from the head of an object: `dicomrst.backends.objects`,
shared with the LOCAL backend (whose files have the same layout)."""

from __future__ import annotations

from dicomrst.backends.objects import HEAD_BYTES, NotDicomObject, parse_file_meta, without_bulk_tail

__all__ = ["HEAD_BYTES", "NotDicomObject", "parse_file_meta", "without_bulk_tail"]
