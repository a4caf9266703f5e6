"""QIDO-RS (Search) over C-FIND: query parameters → C-FIND identifier, results → DICOM JSON.

* `dicomrst.qido.attributes`: query levels, which attribute belongs to which level,
  the default return keys of each level (PS3.18 §10.6.3.3).
* `dicomrst.qido.query`: the QIDO target and query parameters → a `Query` (the
  identifier, limit/offset, Warning texts, and the matching the gateway does itself).
* `dicomrst.common.dicomjson`: pydicom datasets → DICOM JSON (PS3.18 Annex F), one
  dataset at a time.

Nothing here touches the network; `dicomrst.web.qido` runs the find.
"""
