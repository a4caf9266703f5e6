"""Who may use the gateway: ``server.auth`` and ``aets[].access``.

* `principal`: `Principal` (who asks), `AccessPolicy` (who may read or write which AET);
* `basic`: HTTP Basic against an ``htpasswd -B`` users file (bcrypt off the reactor);
* `oidc`: bearer JWTs checked against an OpenID Connect provider's JWKS;
* `authenticator`: `Authenticator`, the ``Authorization`` header to a principal.

Below the web layer and above ``common``: it knows nothing of routes or requests;
``dicomrst.web.access`` applies it to every route.
"""
