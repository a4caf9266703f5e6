"""The HTTP side: routes, requests and the listening service.

* `app`: the Klein routes (`GatewayApp`) and the root resource (base path, CORS,
  streamed STOW bodies); `context`: what handlers may use (`WebContext`).
* `qido`, `wado`, `stow`: the handlers of each service; `requests`: reading parameters.
* `errors`: failures → statuses and error bodies, in one place; `responses`: JSON
  bodies, common headers.
* `site`: the `Site` and its request (lifecycle machine, deadline, 413, one log line);
  `service`: the listening service with a graceful stop.
"""
