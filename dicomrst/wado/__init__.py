"""WADO-RS (Retrieve): instances and metadata of a study, series or instance.

* `negotiation`: Accept → the transfer syntaxes a retrieve may answer in.
* `multipart`: ``multipart/related`` delimiters and part headers.
* `metadata`: a data set → DICOM JSON with BulkDataURIs.
* `sinks`, `metadata_sink`: the `IInstanceSink`\\ s a retrieve writes into, one response
  each; `throttle`: how a response pauses the association (or download) feeding it.
* `retrieve`: running one retrieve into its response, and how it ends.

`dicomrst.web.wado` is the HTTP handler.
"""
