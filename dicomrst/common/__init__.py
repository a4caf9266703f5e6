"""What every layer may use: DICOM constants and helpers, contracts, small Twisted tools.

Nothing here imports from the layers (`ul`, `dimse`, `backends`, `qido`/`wado`/`stow`,
`web`); they all import from here.

* `uids`: transfer syntaxes, SOP classes, our implementation UID, `is_uid`.
* `tags`: tags and VR sets the byte-level code needs.
* `walker`: the element walker over data set bytes, and what is built on it (the UID
  peek of a stream, finding the pixel data).
* `part10`: the Part-10 preamble and file meta, written and read.
* `transcode`: data sets in another transfer syntax (Implicit VR, big endian, deflate,
  compressed → Explicit VR LE; → Implicit VR LE).
* `dicomjson`: pydicom data sets → the DICOM JSON model.
* `accept`: the HTTP Accept parser QIDO and WADO negotiate with.
* `identifiers`: the C-FIND/C-GET/C-MOVE identifier of a study, series or instance.
* `interfaces`: the sink a retrieve writes into and the consumer of one instance.
* `deferreds`: waiting on a Deferred without cancelling it.
* `machine`: explicit state machines as tables, and their Graphviz diagrams.
* `twisted_internals`: every use of a private or undocumented Twisted attribute.
* `reactor`: `IGatewayReactor`, the reactor interfaces the gateway uses, as one type.
* `listening`: a listening socket on an endpoint string, as a service.
* `addresses`: network addresses as text for log lines and URLs.
"""
