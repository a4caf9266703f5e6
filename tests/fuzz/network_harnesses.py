"""Fuzz harnesses for what DICOM peers send: PDUs, association items, DIMSE commands."""

from __future__ import annotations
