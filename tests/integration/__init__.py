"""Tests against real peers: Orthanc, DCMTK, the pynetdicom PACS, moto, twistd, real sockets."""
