"""dicomrst: a DICOMweb gateway to DIMSE PACS and S3 object storage."""

__version__ = "0.1.0"
NAME = "dicomrst"
