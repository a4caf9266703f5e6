"""Backends behind an AET: DIMSE (a PACS) and, later, S3."""
