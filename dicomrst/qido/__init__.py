"""QIDO-RS (Search) over C-FIND: query parameters → C-FIND identifier, results → DICOM JSON.

* `target`: the six resources; `attributes`: query levels, which attribute belongs to
  which level, default return keys, attribute names in parameters; `values`: match
  values checked against their VR; `query`: all of it → a `Query` (`parse_query`).
* `matching`: the matching the gateway does itself on each result.
* `negotiation`: the response's media type; `search`: running a search on a backend.
* `target` also holds `SearchTarget`, what the above need of a resource and its
  information model; `worklist` is the MWL-RS resource on the Modality Worklist model.

`dicomrst.web.qido` is the HTTP handler.
"""
