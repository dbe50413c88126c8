"""Text from the network, the database or the user, made safe to show on a terminal.

A bounce's diagnostic, a log line, a DNS TXT record or a queued sender can
hold anything: ANSI escape sequences that clear the screen or retitle the
window, C1 controls (a lone ``\\x9b`` is a CSI on many terminals), bidi
overrides that reorder what an operator reads, lone surrogates that make
printing fail. :func:`shown` writes each such character as a visible escape
(``\\x1b``, ``\\u202e``) and leaves all other text, non-ASCII included, as it
is; :func:`json_text` does the same for JSON output (``\\u001b`` style, which
``json.dumps`` does only for C0 controls). Rich markup is a separate matter:
the CLI renders values as ``rich.text.Text``, which is never parsed as markup.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: Bidi embeddings / overrides / isolates and marks, line and paragraph separators,
#: and lone surrogates (bytes that were not UTF-8, kept by surrogateescape).
_INVISIBLE = "\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
#: ... plus C0 controls, DEL and C1 controls.
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f{_INVISIBLE}]")
#: What ``json.dumps(ensure_ascii=False)`` leaves unescaped of those (it escapes C0).
_UNSAFE_IN_JSON = re.compile(f"[\x7f-\x9f{_INVISIBLE}]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _json_escape(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


def shown(value: object) -> str:
    """``value`` as text a terminal shows and never obeys (one line stays one line)."""
    text = value if isinstance(value, str) else str(value)
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape, text)


def json_text(value: Any, **kwargs: Any) -> str:
    """``json.dumps(value, ensure_ascii=False, **kwargs)`` with every terminal control
    escaped, C1 and bidi controls included (the same value to any JSON reader)."""
    text = json.dumps(value, ensure_ascii=False, **kwargs)
    if _UNSAFE_IN_JSON.search(text) is None:
        return text
    return _UNSAFE_IN_JSON.sub(_json_escape, text)
