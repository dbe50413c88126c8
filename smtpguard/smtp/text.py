"""Making remote or stored text safe to put in an SMTP reply line, or in a log line."""

from __future__ import annotations


def printable(text: str) -> str:
    """ASCII-only, control-free form of ``text``: non-ASCII escaped, controls as ``?``.

    Whatever a client or a database holds, the result cannot end a reply line
    or smuggle a byte a client might misread.
    """
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if " " <= c <= "~" else "?" for c in text)


#: Longest remote text kept in one log line, in characters.
MAX_LOG_TEXT = 1000

# Control characters, DEL, C1 controls, line/paragraph separators and the
# bidirectional embedding/override/isolate marks (which can make a line read
# differently than it is) become "?"; whitespace controls become a space.
_UNSAFE = {c: "?" for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029,
                            *range(0x202A, 0x202F), *range(0x2066, 0x206A))}  # fmt: skip
_UNSAFE.update({ord(c): " " for c in "\t\n\r\v\f\x85"})


def log_safe(text: str, limit: int = MAX_LOG_TEXT) -> str:
    """``text`` safe for one log line: no control characters (a reply cannot end the
    line and forge the next one, or move a terminal's cursor), whitespace runs as one
    space, at most ``limit`` characters. Unlike :func:`printable`, UTF-8 stays readable.
    """
    if (
        len(text) <= limit
        and text.isprintable()  # no controls, separators, format (bidi) characters
        and "  " not in text
        and text[:1] != " "
        and text[-1:] != " "
    ):
        return text  # the common case, checked in C
    if len(text) > 4 * limit:
        text = text[: 4 * limit]
    text = " ".join(text.translate(_UNSAFE).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
