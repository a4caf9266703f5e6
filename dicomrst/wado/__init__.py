"""WADO-RS (Retrieve) building blocks: pure code, no reactor and no I/O.

* `dicomrst.wado.negotiation`: Accept → the transfer syntaxes a retrieve may answer in
  (`select_instance_media`, `part_transfer_syntax`, `select_metadata_media`).
* `dicomrst.wado.multipart`: ``multipart/related`` delimiters and part headers.
* `dicomrst.wado.part10`: Part-10 preamble and file meta; Implicit VR / big endian /
  deflate / compressed data sets → Explicit VR Little Endian.
* `dicomrst.wado.metadata`: a data set → DICOM JSON with BulkDataURIs.

`dicomrst.web.wado` runs the retrieves and streams the responses.
"""
