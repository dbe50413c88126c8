"""Bounce classification: SMTP replies and returned messages -> :class:`Verdict`.

Pure functions, no I/O. See ``decide.py`` (fields -> verdict), ``rules.py`` +
``rules/*.toml`` (wording -> reason), ``message.py`` + ``formats/`` (bounce bytes
-> per-recipient :class:`Failure` records).
"""

from smtpguard.classify.verdict import Failure, Verdict

__all__ = ["Failure", "Verdict"]
