"""What every provider does with a request: refuse it with a status, or read its JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class Refused(Exception):
    """The request is refused with ``status``; ``message`` is the one-line reason."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def json_body(body: bytes, expected: type, what: str) -> Any:
    """The JSON document in ``body``; 400 unless it parses and is an ``expected``."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting a thousand deep
        raise Refused(400, "not JSON") from None
    if not isinstance(doc, expected):
        raise Refused(400, f"expected {what}")
    return doc
