"""Making remote or stored text safe to put in an SMTP reply line."""

from __future__ import annotations


def printable(text: str) -> str:
    """ASCII-only, control-free form of ``text``: non-ASCII escaped, controls as ``?``.

    Whatever a client or a database holds, the result cannot end a reply line
    or smuggle a byte a client might misread.
    """
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if " " <= c <= "~" else "?" for c in text)
