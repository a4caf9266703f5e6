# -*- test-case-name: tests.unit.test_qido_web -*-
"""Reading a request's query parameters and headers as text."""

from __future__ import annotations

from twisted.web.iweb import IRequest

from dicomrst.errors import BadRequest


def query_args(request: IRequest) -> dict[str, list[str]]:
    """The query parameters, percent-decoded, as UTF-8 text; `BadRequest` if not UTF-8."""
    try:
        return {
            name.decode("utf-8"): [v.decode("utf-8") for v in values] for name, values in request.args.items()
        }
    except UnicodeDecodeError:
        raise BadRequest("the query string is not UTF-8 (percent-encode UTF-8 bytes)") from None


def query_param(request: IRequest, name: bytes) -> str | None:
    """A query parameter's values joined with commas (None when absent)."""
    values = request.args.get(name)
    if not values:
        return None
    return b",".join(values).decode("utf-8", "replace")


def header_text(request: IRequest, name: bytes) -> str | None:
    """A header's value as text (HTTP header bytes are Latin-1), None when absent."""
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None
