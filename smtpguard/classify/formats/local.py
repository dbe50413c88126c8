"""Named MTAs reporting their own local delivery: the reporting MTA is the final destination.

When qmail-send says "Sorry, no mailbox here by that name.", IMail's postmaster says
"Unknown user: a@b", Exim's routers find no such local part or Courier's local delivery
refuses, no remote server was asked: the recipient's own mail system is speaking about its
own mailboxes. Its "no such user" then needs no SMTP stage to be believed (the stage rule of
:func:`smtpguard.classify.decide.decide` is about *remote* replies after DATA).

Structure decides, in two steps, both cheap substring checks on bounded text:

1. the bounce names its MTA by that MTA's documented fixed text (:data:`MTAS`);
2. the recipient's own lines quote no remote server: no IP address literal, no SMTP reply
   code, none of the phrases MTAs use to introduce a remote reply (:data:`REMOTE_MARKS`),
   and (for a DSN) no ``Remote-MTA`` field.

Only then is :attr:`Failure.local_delivery` set (to the MTA's name).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message

from smtpguard.classify.formats._common import cache, code_in, contains_any, direct, header


@dataclass(frozen=True, slots=True)
class LocalMta:
    """One MTA's signature: fixed text in its bounce, or a header it always sets."""

    name: str
    body: str = ""  # lower-case text the bounce explanation contains
    header: str = ""  # header name whose value contains ``marker`` ("" = any value)
    marker: str = ""
    source: str = ""


#: MTAs whose bounces say, by their fixed wording, which software wrote them.
MTAS: tuple[LocalMta, ...] = (
    LocalMta(
        "qmail",
        body="this is the qmail-send program at",
        source="qmail-send(8) / qmail's bounce message ('Hi. This is the qmail-send program "
        "at host.'); qmail-local(8) ('Sorry, no mailbox here by that name. (#5.1.1)')",
    ),
    LocalMta(
        "imail",
        header="x-mailer",
        marker="<smtp32 v",
        source="Ipswitch IMail Server User Guide, 'Unknown Local User Processing' (mail for a "
        "local user who does not exist is returned to the sender by the IMail postmaster; "
        "IMail's SMTP service is SMTP32)",
    ),
    LocalMta(
        "exim",
        body="this message was created automatically by mail delivery software",
        header="x-failed-recipients",
        source="Exim specification, 'Bounce messages' / errors: bounce text 'This message "
        "was created automatically by mail delivery software' and the X-Failed-Recipients "
        "header; routers' local failures ('Unrouteable address', redirect :fail: text)",
    ),
    LocalMta(
        "courier",
        body="running the courier mail server",
        source="Courier MTA documentation, courierdsn: 'This is a delivery status "
        "notification from host, running the Courier mail server'",
    ),
    LocalMta(
        "postfix",
        body="this is the mail system at host",
        source="Postfix bounce(8) templates ('This is the mail system at host $myhostname.'); "
        "local(8) / virtual(8) delivery failures",
    ),
)

#: Phrases with which MTAs introduce a remote server's reply (Postfix "host x said:",
#: Exim "SMTP error from remote mail server", qmail "Remote host said:" / "does not like
#: recipient" / "Connected to", Sendmail and Courier transcripts "<<<" / ">>>").
REMOTE_MARKS = (
    "said:", "remote host", "remote server", "remote mail server", "smtp error", "<<<",
    ">>>", "does not like", "did not like", "connected to", "while talking to",
    "lmtp error", "remote-mta",
)  # fmt: skip
_IP_RE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[ipv6:|\[[0-9a-f:]{3,45}\]", re.I)
_HEAD_LIMIT = 4000


def mta_of(msg: Message, text: str) -> str:
    """The name of the MTA whose documented bounce wording ``msg`` carries ('' if none)."""
    c = cache(msg)
    found = c.get("local_mta")
    if found is None:
        found = ""
        low = text[:_HEAD_LIMIT].lower()
        for mta in MTAS:
            if mta.body and mta.body not in low:
                continue
            if mta.header:
                value = header(msg, mta.header)
                if not value or (mta.marker and mta.marker not in value.lower()):
                    continue
            found = mta.name
            break
        c["local_mta"] = found
    return found  # type: ignore[return-value]


def quotes_remote(diagnostic: str) -> bool:
    """Does a recipient's text quote a remote server (reply code, IP, reply phrasing)?"""
    low = diagnostic.lower()
    if contains_any(low, REMOTE_MARKS):
        return True
    return bool(code_in(diagnostic)) or bool(_IP_RE.search(diagnostic))


def local_delivery(
    msg: Message,
    text: str,
    diagnostic: str,
    remote_mta: str = "",
    once: Callable[[Callable[[str], bool], str], bool] = direct,
) -> str:
    """The MTA's name when its own local delivery reported this failure, else ''."""
    if remote_mta or not diagnostic or once(quotes_remote, diagnostic):
        return ""
    return mta_of(msg, text)
