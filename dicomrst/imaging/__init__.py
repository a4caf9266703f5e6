"""Pixel data and bulk data of stored instances: found, cut out, decoded and rendered,
without a reactor.

Pure functions and values over a seekable Part-10 file (a cache entry, a local copy) or a
pydicom data set; the web layer maps their errors to statuses and streams what they read.
Depends on `dicomrst.common` and `dicomrst.errors` only; anything above may use it.  Reading
frames is cheap I/O; decoding and rendering are CPU work on whole frames, which callers run
off the reactor (`dicomrst.common.cpu.CpuWorkers`).

* `framelist`: the ``{frames}`` of a frames URL, parsed and checked (400 / 404).
* `byterange`: the ``Range`` header of a single-part bulk data request (206 / 416).
* `media`: the media type and ``transfer-syntax`` of a frame part, by stored syntax.
* `extent`: where a frame's or value's bytes are (byte spans, for ranged reads too) and
  how they become the little-endian bytes sent; reading them from a file.
* `elements`: a stored instance walked by seeking: element headers, sequence items.
* `frames`: the frames of an instance's pixel data, native or encapsulated.
* `bulkdata`: a BulkDataURI path resolved to the element's value.
* `params`: the rendered and thumbnail query parameters and media types.
* `render`: decoded frames to 8-bit images (Modality LUT, VOI, colour, viewport), encoded.
"""
