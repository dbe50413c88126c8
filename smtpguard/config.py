"""Every setting of smtpguard, declared once.

Each section is a frozen dataclass; each field carries its default and a
one-line doc in ``metadata``. From this single declaration come: the loader's
validation (unknown keys, wrong types, impossible values), ``smtpguard config
check``'s printout, and the commented example ``conf/smtpguard.toml`` (a test
keeps that file identical to :func:`render_example`). Postfix does the same
with ``postconf.proto``: one place, no drift.

Precedence, lowest to highest: embedded defaults, the TOML file, then
command-line overrides such as ``--data-dir`` (or ``SMTPGUARD_DATA_DIR``) and
``serve --listen``. The file is ``--config PATH`` or ``SMTPGUARD_CONFIG`` when
given, else the installed system file :data:`SYSTEM_CONFIG` when it exists,
else none. So an installed smtpguard (``make install``) and every CLI command
run on that machine read the same file, and with it the same ``data_dir``:
the relay's database, whatever the working directory. ``--config /dev/null``
(an empty file) means "embedded defaults, ignore the system file": that is how
``make run`` keeps a development checkout on ``./var``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints
from urllib.parse import parse_qs, urlsplit, urlunsplit

from smtpguard.display import json_text
from smtpguard.errors import ConfigError
from smtpguard.smtp.status import is_reply_with_status

ENV_CONFIG = "SMTPGUARD_CONFIG"
ENV_DATA_DIR = "SMTPGUARD_DATA_DIR"
#: Shortest signing key accepted for return paths (128 bits).
MIN_SECRET_BYTES = 16
#: The installed configuration (``make install`` puts it here), read when no
#: other file is named. A module attribute so tests can point it elsewhere.
SYSTEM_CONFIG = Path("/etc/smtpguard/smtpguard.toml")


#: Facilities a mail program may log to (logging.handlers.SysLogHandler's names).
SYSLOG_FACILITIES = ("mail", "daemon", "user", *(f"local{n}" for n in range(8)))


def opt(default: Any, doc: str, *, unit: str = "", check: str = "", secret: bool = False) -> Any:
    """Declare one setting: its default, a one-line doc, a unit and a value check.

    ``check`` names a validator in :data:`_CHECKS` for values whose type alone
    does not make them possible (a port, a network, a duration). ``secret``
    marks a value never printed (``config check``, errors); names that look
    like secrets (:func:`is_secret`) are treated so even without the flag.
    """
    meta = {"doc": doc, "unit": unit, "check": check, "secret": secret}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class StoreConfig:
    """The SQLite database (relay, milter, CLI) and whether its list is a fleet's."""

    data_dir: str = opt("./var", "Directory holding smtpguard.db (created if missing).")
    busy_timeout: float = opt(
        5.0, "How long to wait for another process's write lock.", unit="s", check="positive"
    )
    group: str = opt(
        "",
        "Group that may read the database (files 0640, directory 0750 when created);"
        " empty: only the owner (0600 / 0700).",
        check="group?",
    )
    backend: str = opt(
        "sqlite",
        "Where the suppression list is shared: sqlite (this host only) or postgresql (a"
        " fleet: the list, its history, pending entries and soft-bounce counts in PostgreSQL,"
        " read through this host's SQLite cache; the queue stays local).",
        check="store_backend",
    )
    dsn: str = opt(
        "",
        "PostgreSQL connection string for backend = postgresql, e.g."
        " 'postgresql://smtpguard@db.example.net/smtpguard?sslmode=verify-full'; a host"
        " other than loopback or a unix socket needs sslmode=verify-full (or verify-ca)"
        " (a password is better kept in ~/.pgpass or PGPASSFILE).",
        secret=True,
    )
    node: str = opt(
        "",
        "This node's name in the fleet's history (empty: the host name).",
    )
    unknown: str = opt(
        "accept",
        "What a recipient not in the cache gets while this node is out of sync with"
        " PostgreSQL for longer than max_staleness: accept, or tempfail (451 4.3.0).",
        check="accept_tempfail",
    )
    max_staleness: float = opt(
        60.0,
        "How long this node's cache may go without a sync before `unknown` applies.",
        unit="s",
        check="positive",
    )


@dataclass(frozen=True)
class RelayConfig:
    """The inbound side: what Postfix (relayhost) talks to."""

    listen: str = opt("127.0.0.1:10025", "Address and port to accept mail on.", check="hostport")
    hostname: str = opt(
        "smtpguard.localdomain",
        "Name in the greeting, Received headers and DSNs.",
        check="hostname",
    )
    trusted_networks: list[str] = opt(
        ["127.0.0.0/8", "::1/128"], "Clients allowed to relay without AUTH.", check="networks"
    )
    auth_users_file: str = opt(
        "", "Optional file of 'user:password' lines; clients that log in may relay."
    )
    tls_cert: str = opt("", "PEM certificate for STARTTLS (off when empty).")
    tls_key: str = opt("", "PEM private key for STARTTLS.")
    max_message_size: int = opt(
        36_700_160, "Largest message accepted (552 5.3.4 beyond).", unit="bytes", check="positive"
    )
    max_recipients: int = opt(1000, "Recipients per message (452 4.5.3 beyond).", check="positive")
    max_line_length: int = opt(
        4096, "Longest SMTP command or data line accepted.", unit="bytes", check="positive"
    )
    idle_timeout: float = opt(
        300.0,
        "Drop a client idle this long, and time limit for one command (Postfix smtpd_timeout);"
        " in DATA the most time credit min_data_rate lets a client build up.",
        unit="s",
        check="positive",
    )
    min_data_rate: int = opt(
        500,
        "Slowest DATA transfer accepted: each octet received buys 1/min_data_rate seconds,"
        " up to idle_timeout (Postfix 3.7 smtpd_min_data_rate); 421 4.4.2 when credit runs out.",
        unit="bytes/s",
        check="positive",
    )
    session_deadline: float = opt(
        600.0,
        "Longest inbound session, however busy (NOOP every few seconds included); past it the"
        " session is closed with 421 4.4.2 between commands, a message in DATA finishing first.",
        unit="s",
        check="positive",
    )
    max_sessions: int = opt(200, "Concurrent inbound SMTP sessions.", check="positive")
    max_sessions_per_client: int = opt(
        50,
        "Concurrent sessions from one client address, 421 4.7.0 beyond; clients in"
        " trusted_networks are exempt (Postfix smtpd_client_connection_count_limit).",
        check="positive",
    )
    junk_command_limit: int = opt(
        100,
        "NOOP, RSET, VRFY and HELP commands a session may send without a message accepted in"
        " between; 421 4.7.0 beyond (Postfix smtpd_junk_command_limit; 1 under stress).",
        check="positive",
    )
    stress_threshold: float = opt(
        0.8,
        "Share of max_sessions open at which the relay is under stress: stress_idle_timeout"
        " and a junk command limit of 1 apply, and a new session at max_sessions takes the"
        " place of the longest-idle session without a transaction (Postfix STRESS_README).",
        check="share",
    )
    stress_idle_timeout: float = opt(
        10.0,
        "idle_timeout under stress (Postfix: smtpd_timeout = ${stress?{10}:{300}}s).",
        unit="s",
        check="positive",
    )
    max_data_in_flight: int = opt(
        134_217_728,
        "Message data held in memory by all sessions together; a message beyond it gets"
        " 451 4.3.2 (at MAIL for its SIZE=, at DATA, or after its data), unless it is alone.",
        unit="bytes",
        check="positive",
    )
    suppressed_reply: str = opt(
        "550 5.1.1", "Reply code and enhanced status for a suppressed recipient.", check="reply"
    )
    event_loop: str = opt(
        "auto",
        "Event loop of serve: auto (uvloop when installed, else asyncio's), uvloop (fail"
        " if it is missing) or asyncio. uvloop cuts the relay's CPU per message.",
        check="event_loop",
    )


@dataclass(frozen=True)
class DeliveryConfig:
    """The outbound side: how queued mail reaches the next hop."""

    smarthost: str = opt(
        "", "Send everything via this HOST:PORT instead of MX lookup.", check="nexthop?"
    )
    smarthost_user: str = opt(
        "", "AUTH user for the smarthost (no AUTH when empty); sent only over verified TLS."
    )
    smarthost_password: str = opt("", "AUTH password for the smarthost.", secret=True)
    smarthost_tls: str = opt(
        "",
        "STARTTLS to the smarthost: none, opportunistic (unverified), required (certificate"
        " verified); empty: required when smarthost_user is set, else opportunistic.",
        check="tls?",
    )
    smarthost_tls_ca_file: str = opt(
        "",
        "PEM CA file the smarthost's certificate must chain to (instead of the system"
        " store); needs smarthost_tls = required.",
    )
    smarthost_tls_fingerprints: list[str] = opt(
        [],
        "SHA-256 fingerprints of the smarthost's certificate (openssl x509 -fingerprint"
        " -sha256); one matching replaces chain and name checks; needs smarthost_tls = required.",
        check="pins",
    )
    routes: dict[str, str] = opt(
        {},
        'Per-domain next hops: { "example.com" = "mx.example.net:25" };'
        ' a key ".example.com" matches its subdomains.',
        check="routes",
    )
    nameservers: list[str] = opt(
        [], "DNS servers as IP or IP:PORT (empty: the system resolver).", check="nameservers"
    )
    helo_name: str = opt("", "Name sent in EHLO (empty: relay.hostname).", check="hostname?")
    tls: str = opt(
        "opportunistic",
        "STARTTLS to MX hosts: none, opportunistic (RFC 7435: unverified), required; DANE and"
        " MTA-STS would be further modes (not implemented).",
        check="tls",
    )
    port: int = opt(25, "Port of MX hosts.", check="port")
    allowed_destination_networks: list[str] = opt(
        [],
        "Networks MX and A/AAAA answers and address literals may point into although they"
        ' are not public (loopback, RFC 1918, ULA, link-local), e.g. ["10.0.0.0/8"];'
        " smarthost and routes are trusted as configured.",
        check="networks",
    )
    allow_address_literals: bool = opt(
        False, "Deliver to address literals (user@[192.0.2.1]); off: they are bounced."
    )
    connect_timeout: float = opt(30.0, "TCP connect timeout.", unit="s", check="positive")
    command_timeout: float = opt(
        300.0, "Timeout per SMTP command (RFC 5321 section 4.5.3.2).", unit="s", check="positive"
    )
    data_timeout: float = opt(
        600.0, "Timeout for the reply to the final dot.", unit="s", check="positive"
    )
    concurrency: int = opt(50, "Deliveries under way at once.", check="positive")
    messages_per_connection: int = opt(
        100, "Messages sent over one connection before it is closed.", check="positive"
    )
    retry_initial: float = opt(
        300.0, "First retry after a soft failure.", unit="s", check="positive"
    )
    retry_factor: float = opt(2.0, "Each later retry waits this much longer.", check="factor")
    retry_max: float = opt(
        14_400.0, "Longest wait between two retries.", unit="s", check="positive"
    )
    greylist_delay: float = opt(
        300.0, "Earliest retry after a greylisting reply.", unit="s", check="positive"
    )
    queue_lifetime: float = opt(
        432_000.0, "Give up (DSN reason 'expired') after this long.", unit="s", check="positive"
    )
    drain_timeout: float = opt(
        30.0, "On SIGTERM, wait this long for deliveries under way.", unit="s", check="positive"
    )
    reclaim_after: float = opt(
        3600.0,
        "A recipient claimed by an attempt this long ago, with no attempt of this"
        " process still working on it (its result could not be written), is queued again.",
        unit="s",
        check="positive",
    )
    keep_finished: float = opt(
        604_800.0,
        "Keep finished queue messages and their history this long.",
        unit="s",
        check="positive",
    )

    @property
    def smarthost_tls_mode(self) -> str:
        """``smarthost_tls`` as applied: empty is ``required`` with credentials, else
        ``opportunistic`` (a password only ever goes over verified TLS)."""
        if self.smarthost_tls:
            return self.smarthost_tls
        return "required" if self.smarthost_user else "opportunistic"


@dataclass(frozen=True)
class DsnConfig:
    """Delivery status notifications the relay sends back to senders (RFC 3464)."""

    enabled: bool = opt(True, "Send DSNs for hard bounces and expired messages.")
    next_hop: str = opt(
        "127.0.0.1:25", "Where DSNs are handed (the local Postfix).", check="hostport"
    )
    return_size_limit: int = opt(
        50_000,
        "Largest original returned whole with RET=FULL (Postfix's bounce_size_limit);"
        " a larger one is returned as its header section only.",
        unit="bytes",
        check="positive",
    )


@dataclass(frozen=True)
class ClassifierConfig:
    """Bounce classification rules."""

    rules_file: str = opt("", "Operator TOML rules, added to and overriding the shipped ones.")


@dataclass(frozen=True)
class PolicyConfig:
    """What evidence may do to the suppression list (the sink's rules and storm breaker)."""

    modes: dict[str, str] = opt(
        {},
        "Per evidence kind, enforce (default) or record (history and metrics only),"
        ' e.g. { data-reply = "record" }; dsn-unverified is never enforced.',
        check="modes",
    )
    dns_confirm_after: float = opt(
        3600.0,
        "A DNS answer (NXDOMAIN, null MX) suppresses its domain only when seen again"
        " at least this long after the first time.",
        unit="s",
        check="positive",
    )
    dns_expiry: float = opt(
        2_592_000.0, "How long a domain suppressed by DNS answers stays so.", unit="s",
        check="positive",
    )  # fmt: skip
    storm_share: float = opt(
        0.2,
        "Storm breaker: a destination's new suppressions become pending (not enforced)"
        " while more than this share of its attempts in storm_window would suppress.",
        check="share",
    )
    storm_min_attempts: int = opt(
        50,
        "Storm breaker: a destination with fewer attempts in the window counts as having"
        " this many (so a small sample cannot look normal).",
        check="positive",
    )
    storm_window: float = opt(
        600.0, "Storm breaker: the sliding window attempts are counted in.", unit="s",
        check="positive",
    )  # fmt: skip
    soft_bounce_limit: int = opt(
        5,
        "A recipient is suppressed after this many soft bounces (0: never), spanning at"
        " least soft_bounce_span with no delivery in between.",
        check="count",
    )
    soft_bounce_span: float = opt(
        604_800.0, "The soft bounces must span at least this long.", unit="s", check="positive"
    )
    soft_bounce_forget: float = opt(
        2_592_000.0,
        "A count of soft bounces not added to for this long starts again.",
        unit="s",
        check="positive",
    )
    soft_bounce_reasons: list[str] = opt(
        ["mailboxfull", "suspend", "userunknown", "hostunknown", "hasmoved"],
        "Soft bounce reasons that count (they are about the recipient's mailbox).",
        check="reasons",
    )
    expiry: dict[str, str] = opt(
        {"mailboxfull": "30d", "suspend": "90d"},
        "Per reason, how long a suppression lasts (prune deletes it after);"
        " a reason not listed suppresses for good.",
        check="expiry",
    )


@dataclass(frozen=True)
class MilterConfig:
    """The milter (`smtpguard milter`, Postfix smtpd_milters; needs the milter extra)."""

    listen: str = opt(
        "inet:127.0.0.1:8891",
        "Where Postfix connects, as in main.cf: inet:HOST:PORT or unix:/path/to/socket.",
        check="milter_socket",
    )
    socket_mode: str = opt(
        "660",
        "Permissions (octal) of a unix: socket; Postfix's smtpd must be able to write it.",
        check="octal_mode",
    )
    on_suppressed: str = opt(
        "reject",
        "A suppressed recipient is: reject (relay.suppressed_reply), tempfail (450 4.x.x:"
        " a dry run that only delays) or discard (accepted, then silently dropped).",
        check="milter_action",
    )
    on_error: str = opt(
        "accept",
        "When smtpguard itself fails (store, classifier, timeout): accept or tempfail.",
        check="accept_tempfail",
    )
    internal_networks: list[str] = opt(
        ["127.0.0.0/8", "::1/128"],
        "Clients whose mail is outgoing (as is authenticated and locally submitted mail):"
        " bounces are recorded only from the others.",
        check="networks",
    )
    record_bounces: bool = opt(
        True, "Classify incoming DSNs, bounces and ARF reports and record them."
    )
    bounce_header: bool = opt(
        True, "Add an X-Smtpguard-Bounce: header with the verdict to an incoming bounce."
    )
    rewrite_sender: bool = opt(
        False,
        "Sign the envelope sender of outgoing single-recipient mail (b+TOKEN@ at"
        " intake.bounce_domain, which it needs), so its bounces are tied to what was sent.",
    )
    record_timeout: float = opt(
        5.0,
        "Longest wait at end of message for a bounce to be recorded (the message then"
        " passes and the record completes in the background).",
        unit="s",
        check="positive",
    )
    metrics_listen: str = opt(
        "", "HOST:PORT for the milter's /metrics endpoint (off when empty).", check="hostport?"
    )


@dataclass(frozen=True)
class PolicyServiceConfig:
    """The Postfix policy service (`smtpguard policy`, check_policy_service in Postfix)."""

    listen: str = opt("127.0.0.1:10040", "Address and port Postfix connects to.", check="hostport")
    on_suppressed: str = opt(
        "reject",
        "A suppressed recipient is: reject (relay.suppressed_reply) or tempfail"
        " (450 4.x.x: a dry run that only delays).",
        check="policy_action",
    )
    on_error: str = opt(
        "dunno",
        "Answer to a request that cannot be checked (malformed, oversized, store failure):"
        " dunno (let the other restrictions decide) or defer (DEFER_IF_PERMIT, 450 4.3.0).",
        check="dunno_defer",
    )
    max_request_size: int = opt(
        16_384,
        "Largest request (attribute lines up to the blank line); larger ones get on_error.",
        unit="bytes",
        check="positive",
    )
    idle_timeout: float = opt(
        600.0,
        "Close a Postfix connection idle this long (Postfix closes first, after its"
        " smtpd_policy_service_max_idle of 300s).",
        unit="s",
        check="positive",
    )
    max_connections: int = opt(
        1000, "Postfix connections served at once; more are closed at once.", check="positive"
    )
    metrics_listen: str = opt(
        "",
        "HOST:PORT for the policy service's /metrics endpoint (off when empty).",
        check="hostport?",
    )


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics."""

    listen: str = opt(
        "", "HOST:PORT for the /metrics endpoint (off when empty).", check="hostport?"
    )
    queue_refresh: float = opt(
        15.0, "How often the queue gauges (depth, oldest age) are recounted.", unit="s",
        check="positive",
    )  # fmt: skip


@dataclass(frozen=True)
class LogConfig:
    """The delivery log: one line per recipient attempt, as Postfix's maillog has."""

    destination: str = opt(
        "stderr",
        "Where delivery-log lines go: stderr (journald under systemd), syslog or file.",
        check="log_destination",
    )
    format: str = opt("text", "text (Postfix-like key=value lines) or json (one object per line).",
                      check="log_format")  # fmt: skip
    file: str = opt("", "The file written when destination is file (opened for appending).")
    syslog_socket: str = opt("/dev/log", "The local syslog socket when destination is syslog.")
    syslog_facility: str = opt("mail", "Syslog facility of the lines.", check="syslog_facility")


@dataclass(frozen=True)
class ReportConfig:
    """The per-day delivery counts the relay keeps for smtpguard report."""

    keep: float = opt(
        7_776_000.0, "Per-day counts older than this are pruned.", unit="s", check="positive"
    )
    max_domains_per_day: int = opt(
        500,
        "Destination domains counted on their own per day; later ones count as (other).",
        check="positive",
    )


@dataclass(frozen=True)
class IntakeConfig:
    """Bounce intake: signed return paths (VERP) tie returned DSNs to what was sent."""

    bounce_domain: str = opt(
        "",
        "Envelope senders become b+TOKEN@DOMAIN, a domain routed to smtpguard (off when empty).",
        check="hostname?",
    )
    secret_file: str = opt(
        "",
        "File holding the key that signs return paths (at least 16 bytes; not world-readable).",
    )
    secret: str = opt(
        "", "The signing key itself, when no secret_file is used (never printed).", secret=True
    )
    previous_secret_file: str = opt(
        "", "After a key rotation: the file of the key used before, still accepted for a while."
    )
    previous_secret: str = opt(
        "", "The previous key itself, when no previous_secret_file is used.", secret=True
    )
    previous_valid_until: str = opt(
        "",
        "Until when return paths signed with the previous key count, e.g. 2026-12-31T00:00:00Z.",
        check="time?",
    )
    token_lifetime: float = opt(
        1_209_600.0,
        "How long a return path stays valid (counted in whole days, rounded up).",
        unit="s",
        check="days",
    )
    listen: str = opt(
        "",
        "HOST:PORT where smtpguard serve takes mail for the bounce domain (off when empty).",
        check="hostport?",
    )
    max_message_size: int = opt(
        10_485_760, "Largest returned message accepted (552 5.3.4 beyond).", unit="bytes",
        check="positive",
    )  # fmt: skip
    max_sessions: int = opt(50, "Concurrent sessions on the intake listener.", check="positive")
    rate_limit: int = opt(
        120,
        "Messages one client address may return per minute (450 4.7.1 beyond).",
        check="positive",
    )

    def problems(self) -> list[str]:
        """What makes this table impossible as a whole (each key may be fine alone)."""
        out = []
        for key in ("", "previous_"):
            inline = getattr(self, f"{key}secret")
            if inline and getattr(self, f"{key}secret_file"):
                out.append(f"set {key}secret_file or {key}secret, not both")
            if inline and len(inline.encode()) < MIN_SECRET_BYTES:
                out.append(f"{key}secret must be at least {MIN_SECRET_BYTES} bytes (a random key)")
        if self.bounce_domain and not (self.secret or self.secret_file):
            out.append("bounce_domain is set but no secret_file (or secret) signs return paths")
        if self.listen and not self.bounce_domain:
            out.append("listen is set but no bounce_domain says which mail to take")
        has_previous = bool(self.previous_secret or self.previous_secret_file)
        if has_previous != bool(self.previous_valid_until):
            out.append(
                "previous_secret_file (or previous_secret) and previous_valid_until go together"
            )
        return out


@dataclass(frozen=True)
class WebhooksConfig:
    """HTTP listener for ESP event webhooks (Amazon SES via SNS, SendGrid, Postmark)."""

    listen: str = opt(
        "",
        "HOST:PORT of the webhook listener (off when empty; keep it on loopback behind a proxy).",
        check="hostport?",
    )
    max_body: int = opt(
        1_048_576, "Largest request body accepted (413 beyond).", unit="bytes", check="positive"
    )
    ses_topic_arns: list[str] = opt(
        [],
        "SNS topics whose SES notifications /ses accepts (off when empty).",
        check="arns",
    )
    sns_certificate_dir: str = opt(
        "",
        "Trusted SNS signing certificates, named as in SigningCertURL (empty: fetch over HTTPS).",
    )
    sns_confirm_subscriptions: bool = opt(
        True, "Visit the SubscribeURL of a verified confirmation for a listed topic."
    )
    sendgrid_public_key: str = opt(
        "",
        "SendGrid's Signed Event Webhook key, base64 or PEM (/sendgrid off when empty).",
        check="ec-public-key?",
    )
    sendgrid_max_age: float = opt(
        600.0, "Refuse SendGrid events signed longer ago (or ahead) than this.", unit="s",
        check="positive",
    )  # fmt: skip
    postmark_user: str = opt(
        "", "HTTP basic auth user Postmark must send (/postmark off when empty)."
    )
    postmark_password_file: str = opt("", "File holding the basic auth password for Postmark.")
    postmark_password: str = opt(
        "", "The Postmark basic auth password itself (never printed).", secret=True
    )

    def problems(self) -> list[str]:
        """What makes this table impossible as a whole."""
        out = []
        if self.postmark_password and self.postmark_password_file:
            out.append("set postmark_password_file or postmark_password, not both")
        if bool(self.postmark_user) != bool(self.postmark_password or self.postmark_password_file):
            out.append(
                "postmark_user and postmark_password_file (or postmark_password) go together"
            )
        return out


@dataclass(frozen=True)
class DoctorConfig:
    """The doctor command: DNS and reputation checks of a sending domain."""

    dnsbl_zones: list[str] = opt(
        ["zen.spamhaus.org", "bl.spamcop.net", "psbl.surriel.com"],
        "DNS block lists checked for the sending IP (--ip); --dnsbl replaces the list.",
        check="dns_names",
    )
    dkim_selectors: list[str] = opt(
        [], "DKIM selectors checked when no --selector is given.", check="dns_names"
    )
    timeout: float = opt(
        3.0, "Time limit of one DNS lookup, retries included.", unit="s", check="positive"
    )


@dataclass(frozen=True)
class ShapingConfig:
    """Per-site delivery limits (connections, message rate) and where budgets live."""

    file: str = opt(
        "",
        "Operator's shaping file (TOML), overlaid on the shipped provider defaults.",
    )
    shared: str = opt(
        "",
        "redis://HOST:PORT/DB (rediss:// for TLS, unix:///path/redis.sock) to share site rate"
        " budgets with a fleet; empty: this node only.",
        check="redis_url?",
    )
    shared_timeout: float = opt(
        0.1,
        "Longest wait for Redis per message (connect included); beyond it the message is paced"
        " by this node's own buckets.",
        unit="s",
        check="positive",
    )
    fallback_share: float = opt(
        1.0,
        "Share of each site's rate and burst this node takes alone while Redis is unreachable"
        " (1/nodes keeps the fleet within the budget; 1: each node the full limit).",
        check="fraction",
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration, one attribute per TOML table."""

    store: StoreConfig = field(default_factory=StoreConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    dsn: DsnConfig = field(default_factory=DsnConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    milter: MilterConfig = field(default_factory=MilterConfig)
    policy_service: PolicyServiceConfig = field(default_factory=PolicyServiceConfig)
    log: LogConfig = field(default_factory=LogConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    doctor: DoctorConfig = field(default_factory=DoctorConfig)
    intake: IntakeConfig = field(default_factory=IntakeConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    source: str = field(default="(embedded defaults)", compare=False)
    #: Durations as the operator wrote them ("5d"), by "table.key", for printing.
    written: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def data_dir(self) -> Path:
        return Path(self.store.data_dir)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "smtpguard.db"

    def with_overrides(self, *, origin: str = "", **sections: dict[str, Any]) -> Config:
        """A copy with some keys replaced, validated like file values.

        ``cfg.with_overrides(relay={"listen": "127.0.0.1:2525"}, origin="--listen")``;
        ``origin`` names where the values came from in an error (default: the
        configuration's own source).
        """
        changed = {}
        written = dict(self.written)
        for name, values in sections.items():
            current = getattr(self, name)
            merged = {f.name: getattr(current, f.name) for f in fields(current)}
            for key, value in values.items():
                if key not in merged:
                    raise ConfigError(f"unknown setting {name}.{key}")
                f = _field(type(current), key)
                merged[key] = _coerce(origin or self.source, f"{name}.{key}", value, f)
                written[f"{name}.{key}"] = value
            changed[name] = _whole(origin or self.source, name, type(current)(**merged))
        cfg = dataclasses.replace(self, **changed, written=written)
        check_combinations(cfg)
        return cfg


SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in fields(Config)
    if f.name not in ("source", "written")
}

# --------------------------------------------------------------------------- validation

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``300``, ``"30s"``, ``"5m"``, ``"12h"``, ``"5d"``, ``"1w"``."""
    if isinstance(value, bool):
        raise ValueError("a duration, not a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.match(value)
    if not m:
        raise ValueError("a duration like 30s, 5m, 12h or 5d")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact form: ``432000.0`` -> ``"5d"``, ``2.5`` -> ``"2500ms"``."""
    for unit in ("d", "h", "m", "s", "ms"):
        n = seconds / _DURATION_UNITS[unit]
        if n >= 1 and abs(n - round(n)) < 1e-9:
            return f"{round(n)}{unit}"
    return f"{seconds:g}s"


def parse_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """``("::1", 25)`` from ``"[::1]:25"``, ``"127.0.0.1:25"`` or ``"host"``."""
    host, port = value, None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {value!r}")
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected HOST:PORT, got {value!r}")
            port = rest[1:]
    elif value.count(":") == 1:
        host, port = value.split(":")
    if not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if port is None:
        if default_port is None:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port must be 1-65535 in {value!r}")
    return host, int(port)


def parse_nexthop(value: str, default_port: int) -> tuple[str, int]:
    """A next hop as an operator writes it: ``"mx.example.net:2525"``, ``"[::1]:25"``,
    ``"host"`` (``default_port``) or a bare IPv6 address (no port)."""
    if value.count(":") > 1 and not value.startswith("["):
        ipaddress.ip_address(value)  # ValueError for anything but an IPv6 address
        return value, default_port
    return parse_hostport(value, default_port)


def parse_milter_socket(value: str) -> tuple[str, str, int]:
    """A milter socket as Postfix's main.cf names it -> ``(kind, host or path, port)``.

    ``"inet:127.0.0.1:8891"`` -> ``("inet", "127.0.0.1", 8891)``, ``"inet:[::1]:8891"``
    -> ``("inet", "::1", 8891)``, ``"unix:/run/smtpguard/milter.sock"`` -> ``("unix",
    "/run/smtpguard/milter.sock", 0)``. (libmilter spells the first ``inet:8891@127.0.0.1``;
    operators copy the main.cf form, so that is the one the configuration takes.)
    """
    kind, sep, rest = value.partition(":")
    if sep and kind == "unix":
        if not rest.startswith("/") or "\0" in rest:
            raise ValueError(f"unix: needs an absolute path, got {value!r}")
        return "unix", rest, 0
    if sep and kind == "inet":
        host, port = parse_hostport(rest)
        return "inet", host, port
    raise ValueError(f"expected inet:HOST:PORT or unix:/path, got {value!r}")


def _octal_mode(value: str) -> None:
    if not re.fullmatch(r"0?[0-7]{3}", value):
        raise ValueError("file permissions in octal, like 660")


def _choice(*values: str) -> Any:
    return _is(lambda v: v in values, "one of " + ", ".join(values))


def _parsed_by(parse: Any, expected: str) -> Any:
    """A check that ``parse(value)`` accepts the value; its error says what was ``expected``."""

    def check(value: str) -> None:
        try:
            parse(value)
        except ValueError:
            raise ValueError(expected) from None

    return check


_hostport = _parsed_by(parse_hostport, "HOST:PORT with a port 1-65535")
_nexthop = _parsed_by(lambda v: parse_nexthop(v, 25), "HOST or HOST:PORT with a port 1-65535")
_milter_socket = _parsed_by(
    parse_milter_socket, "inet:HOST:PORT (port 1-65535) or unix:/absolute/path"
)


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")


def url_password(value: str) -> str | None:
    """The password in a URL such as ``redis://:PASSWORD@host/0``, else None."""
    if "://" not in value:
        return None
    try:
        return urlsplit(value).password
    except ValueError:
        return None


def redact_url(value: str) -> str:
    """``value`` with a URL's password masked (``redis://:********@host/0``), for printing."""
    if url_password(value) is None:
        return value
    parts = urlsplit(value)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))


#: What a Redis URL's query may set: the database, and for rediss:// the CA that
#: verifies the server and a client certificate. Nothing turns verification off.
_REDIS_QUERY = {"redis": {"db"}, "rediss": {"db", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"},
                "unix": {"db"}}  # fmt: skip


def _redis_url(value: str) -> None:
    expected = "a Redis URL: redis://HOST:PORT/DB, rediss://HOST:PORT/DB or unix:///path/redis.sock"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(expected) from None
    if parts.scheme in ("redis", "rediss"):
        db = parts.path.removeprefix("/")
        if not parts.hostname or not (db == "" or db.isdigit()):
            raise ValueError(expected)
    elif parts.scheme != "unix" or not parts.path.startswith("/") or parts.netloc:
        raise ValueError(expected)
    allowed = _REDIS_QUERY[parts.scheme]
    for key, values in query.items():
        if key not in allowed:
            raise ValueError(f"{expected}, with only {', '.join(sorted(allowed))} after '?'")
        if key == "db" and not all(v.isdigit() for v in values):
            raise ValueError(f"{expected} (db=N, a number)")
    if parts.password and parts.scheme == "redis" and not _is_loopback(parts.hostname or ""):
        raise ValueError(
            "rediss:// (TLS that verifies the server) or a unix socket for a URL with a"
            " password: redis:// would send it in clear text"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(value: str) -> None:
    if not _HOSTNAME.fullmatch(value):
        raise ValueError("a host name of letters, digits, dots and hyphens")


_DNS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")


def _dns_names(value: list[str]) -> None:
    for name in value:
        if not _DNS_NAME.fullmatch(name.rstrip(".")):
            raise ValueError(f"DNS names of letters, digits, '.', '-' and '_', not {name!r}")


def _group(value: str) -> None:
    import grp

    if not value.isdigit():
        try:
            grp.getgrnam(value)
        except KeyError:
            raise ValueError("the name or number of an existing group") from None


def _networks(value: list[str]) -> None:
    for net in value:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ValueError(f"IP networks like 127.0.0.0/8, not {net!r}") from None


def parse_nameserver(value: str) -> tuple[str, int]:
    """``("127.0.0.1", 5353)`` from ``"127.0.0.1:5353"``; port 53 by default; the host
    must be an IP address (a resolver cannot look up its own name server)."""
    try:
        host, port = parse_hostport(value, 53)
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"IP or IP:PORT of a DNS server, not {value!r}") from None
    return host, port


def _nameservers(value: list[str]) -> None:
    for ns in value:
        parse_nameserver(ns)


def _routes(value: dict[str, str]) -> None:
    for domain, hop in value.items():
        if not _HOSTNAME.fullmatch(domain.removeprefix(".").rstrip(".")):
            raise ValueError(f"domains like example.com or .example.com as keys, not {domain!r}")
        try:
            parse_nexthop(hop, 25)
        except ValueError:
            raise ValueError(f"HOST or HOST:PORT next hops, not {hop!r} for {domain!r}") from None


def _time(value: str) -> None:
    try:
        parse_iso_time(value)
    except ValueError:
        raise ValueError("an ISO 8601 time like 2026-12-31T00:00:00Z") from None


def parse_iso_time(value: str) -> float:
    """Epoch seconds from an ISO 8601 time; without an offset it is UTC."""
    from datetime import UTC, datetime

    when = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?")


def _arns(value: list[str]) -> None:
    for arn in value:
        if not _ARN.fullmatch(arn):
            raise ValueError(
                f"SNS topic ARNs like arn:aws:sns:us-east-1:123456789012:bounces, not {arn!r}"
            )


def _ec_public_key(value: str) -> None:
    from smtpguard.intake.keys import load_ec_public_key

    load_ec_public_key(value)


def _pins(value: list[str]) -> None:
    from smtpguard.relay.tlspolicy import TLSPolicyError, parse_pin

    for pin in value:
        try:
            parse_pin(pin)
        except TLSPolicyError:
            raise ValueError(
                f"SHA-256 certificate fingerprints (64 hex digits, colons allowed), not {pin!r}"
            ) from None


def _modes(value: dict[str, str]) -> None:
    from smtpguard.policy.evidence import EVIDENCE_KINDS, MODES

    for kind, mode in value.items():
        if kind not in EVIDENCE_KINDS:
            raise ValueError(f"evidence kinds as keys ({', '.join(EVIDENCE_KINDS)}), not {kind!r}")
        if mode not in MODES:
            raise ValueError(f"enforce or record for {kind!r}, not {mode!r}")


def _reasons(value: list[str]) -> None:
    from smtpguard.classify.verdict import REASONS

    for reason in value:
        if reason not in REASONS:
            raise ValueError(f"classifier reasons like mailboxfull, not {reason!r}")


def _expiry(value: dict[str, str]) -> None:
    from smtpguard.store.entries import SUPPRESSION_REASONS

    for reason, duration in value.items():
        if reason not in SUPPRESSION_REASONS:
            raise ValueError(f"suppression reasons as keys, like mailboxfull, not {reason!r}")
        try:
            if parse_duration(duration) <= 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"durations like 30d for {reason!r}, not {duration!r}") from None


def _is(test: Any, expected: str) -> Any:
    def check(value: Any) -> None:
        if not test(value):
            raise ValueError(expected)

    return check


def _optional(check: Any) -> Any:
    """The same check, but an empty string (the setting is off) passes."""
    return lambda value: value == "" or check(value)


_tls = _is(
    lambda v: v in ("none", "opportunistic", "required"), "one of none, opportunistic, required"
)

#: ``opt(check=NAME)`` -> a function that raises ValueError("what was expected").
_CHECKS: dict[str, Any] = {
    "positive": _is(lambda v: v > 0, "a number greater than 0"),
    "factor": _is(lambda v: v >= 1, "a factor of at least 1 (retries must not get shorter)"),
    "share": _is(lambda v: 0 < v < 1, "a share between 0 and 1, like 0.2"),
    "fraction": _is(lambda v: 0 < v <= 1, "a share greater than 0 and at most 1, like 0.5"),
    "redis_url?": _optional(_redis_url),
    "modes": _modes,
    "count": _is(lambda v: v >= 0, "a whole number, 0 or more"),
    "reasons": _reasons,
    "expiry": _expiry,
    "port": _is(lambda v: 0 < v < 65536, "a port number 1-65535"),
    "hostport": _hostport,
    "hostport?": _optional(_hostport),
    "nexthop?": _optional(_nexthop),
    "hostname": _hostname,
    "hostname?": _optional(_hostname),
    "dns_names": _dns_names,
    "group?": _optional(_group),
    "networks": _networks,
    "nameservers": _nameservers,
    "routes": _routes,
    "time?": _optional(_time),
    "days": _is(lambda v: v >= 86400, "at least a day (1d)"),
    "arns": _arns,
    "ec-public-key?": _optional(_ec_public_key),
    "tls": _tls,
    "tls?": _optional(_tls),
    "pins": _pins,
    "milter_socket": _milter_socket,
    "octal_mode": _octal_mode,
    "milter_action": _choice("reject", "tempfail", "discard"),
    "policy_action": _choice("reject", "tempfail"),
    "accept_tempfail": _choice("accept", "tempfail"),
    "store_backend": _choice("sqlite", "postgresql"),
    "dunno_defer": _choice("dunno", "defer"),
    "event_loop": _choice("auto", "uvloop", "asyncio"),
    "log_destination": _is(
        lambda v: v in ("stderr", "syslog", "file"), "one of stderr, syslog, file"
    ),
    "log_format": _is(lambda v: v in ("text", "json"), "text or json"),
    "syslog_facility": _is(
        lambda v: v in SYSLOG_FACILITIES, f"a facility: {', '.join(SYSLOG_FACILITIES)}"
    ),
    "reply": _is(
        lambda v: v.startswith("5") and is_reply_with_status(v),
        "a 5xx reply code and enhanced status like '550 5.1.1'",
    ),
}


def _field(section: type, key: str) -> dataclasses.Field[Any]:
    for f in fields(section):
        if f.name == key:
            return f
    raise KeyError(key)


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is list:
        item = _describe(get_args(tp)[0]).removeprefix("a ").removeprefix("an ")
        return f"a list of {item}s"
    if origin is dict:
        return "a table of strings"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[tp]


def _coerce(source: str, key: str, value: Any, f: dataclasses.Field[Any]) -> Any:
    """Check ``value`` against the declared type and check; return it normalised."""
    tp = _types[id(f)]
    unit = f.metadata.get("unit", "")
    try:
        if unit == "s" and tp is float:
            value = parse_duration(value)
        ok: bool
        origin = get_origin(tp)
        if origin is list:
            ok = isinstance(value, list) and all(isinstance(v, get_args(tp)[0]) for v in value)
        elif origin is dict:
            ok = isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            )
        elif tp is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif tp is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, tp)
        if not ok:
            raise ValueError(_describe(tp))
        if f.metadata.get("check"):
            _CHECKS[f.metadata["check"]](value)
    except ValueError as e:
        shown = "(hidden)" if is_secret(f) else repr(_unmasked(value))
        raise ConfigError(f"{source}: {key}: expected {e}, got {shown}") from None
    return value


_SECRET_NAME = re.compile(r"password|secret|token|passphrase|credential|api_key")


def _unmasked(value: Any) -> Any:
    """``value`` safe to print: a URL's password masked."""
    return redact_url(value) if isinstance(value, str) else value


def is_secret(f: dataclasses.Field[Any]) -> bool:
    """A setting whose value is never printed: flagged ``secret``, or a string named like
    one (``*password*``, ``*secret*``, ``*token*``...; not a ``*_file`` naming where one is
    kept), so a key added later is covered too."""
    if f.metadata.get("secret"):
        return True
    named = _SECRET_NAME.search(f.name) is not None and not f.name.endswith(("_file", "_path"))
    return named and _types.get(id(f)) is str


def secrets_set(cfg: Config) -> list[str]:
    """``table.key`` of every secret setting that holds a value (a URL with a password too)."""
    return [
        f"{table}.{f.name}"
        for table, cls in SECTIONS.items()
        for f in fields(cls)
        if (value := getattr(getattr(cfg, table), f.name))
        and (is_secret(f) or (isinstance(value, str) and url_password(value)))
    ]


#: The group ``make install`` gives the installed configuration (mode 0640 root:smtpguard):
#: the relay runs as it and must read the file.
SERVICE_GROUP = "smtpguard"


def secret_file_warnings(cfg: Config) -> list[str]:
    """Warnings for a configuration file that holds a secret and that others may read.

    Like ssh refusing a private key with loose permissions: a password in a
    world-readable file is everybody's. Group-readable is fine only for the
    service group (``make install``'s 0640 root:smtpguard).
    """
    held = secrets_set(cfg)
    path = Path(cfg.source)
    if not held or not path.is_file():
        return []
    st = path.stat()
    who = []
    if st.st_mode & 0o004:
        who.append("everyone")
    if st.st_mode & 0o040:
        import grp

        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        if group != SERVICE_GROUP:
            who.append(f"group {group}")
    if not who:
        return []
    mode = f"{st.st_mode & 0o777:04o}"
    return [
        f"{path}: holds {', '.join(held)} and is readable by {' and '.join(who)} (mode {mode}):"
        f" chmod 0600, or 0640 with group {SERVICE_GROUP}"
    ]


def check_combinations(cfg: Config) -> None:
    """Settings that are fine alone and wrong together; ConfigError naming the key.

    Credentials go only over TLS that verifies the server (RFC 4954 section 4
    wants an encrypted channel; an unverified one gives the password to
    whoever answers): with ``smarthost_user`` set, ``smarthost_tls`` must be
    ``required`` (its default then). The milter signs return paths only at a
    bounce domain: ``milter.rewrite_sender`` needs ``intake.bounce_domain``.
    """
    d = cfg.delivery
    mode = d.smarthost_tls_mode
    where = cfg.source
    if cfg.store.backend == "postgresql" and not cfg.store.dsn:
        raise ConfigError(
            f'{where}: store.backend = "postgresql" needs store.dsn (the fleet\'s database)'
        )
    if cfg.store.dsn:
        remote = _unverified_remote_hosts(cfg.store.dsn)
        if remote:
            raise ConfigError(
                f"{where}: store.dsn: PostgreSQL at {', '.join(remote)} without verified TLS"
                " would send its credentials and the list to whoever answers: add"
                " sslmode=verify-full (with sslrootcert=FILE for a private CA)"
            )
    if cfg.milter.rewrite_sender and not cfg.intake.bounce_domain:
        raise ConfigError(
            f"{where}: milter.rewrite_sender needs intake.bounce_domain (and its secret_file):"
            " the signed return paths are addresses at that domain"
        )
    if d.smarthost_user and mode != "required":
        raise ConfigError(
            f"{where}: delivery.smarthost_tls: {mode!r} with delivery.smarthost_user set would"
            ' send the password without a verified certificate: use "required" (with'
            " smarthost_tls_ca_file or smarthost_tls_fingerprints for a private CA or a"
            " self-signed certificate)"
        )
    for key, value in (
        ("smarthost_tls_ca_file", d.smarthost_tls_ca_file),
        ("smarthost_tls_fingerprints", d.smarthost_tls_fingerprints),
    ):
        if value and mode != "required":
            raise ConfigError(f'{where}: delivery.{key} needs smarthost_tls = "required"')
    if d.smarthost_tls_ca_file and d.smarthost_tls_fingerprints:
        raise ConfigError(
            f"{where}: delivery.smarthost_tls_fingerprints: choose a CA file or fingerprints,"
            " not both (a fingerprint replaces the chain check)"
        )


_DSN_PAIR = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def _unverified_remote_hosts(dsn: str) -> list[str]:
    """Hosts of a libpq connection string reached over the network without a verified
    certificate (sslmode other than verify-ca / verify-full). Loopback and unix-socket
    hosts need none: nothing crosses the network."""
    from urllib.parse import parse_qs, unquote, urlsplit

    hosts: list[str] = []
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        for item in parts.netloc.rpartition("@")[2].split(","):
            host = item[1 : item.find("]")] if item.startswith("[") else item.partition(":")[0]
            hosts.append(unquote(host))
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    else:
        params = {k: v.strip("'") for k, v in _DSN_PAIR.findall(dsn)}
    if "host" in params:
        hosts = params["host"].split(",")
    if params.get("sslmode", "") in ("verify-ca", "verify-full"):
        return []

    def local(host: str) -> bool:
        if host in ("", "localhost") or host.startswith("/"):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    return [h for h in hosts if not local(h)]


# id(field) -> its declared type, resolved once (``from __future__ import
# annotations`` leaves only strings in ``Field.type``).
_types: dict[int, Any] = {
    id(f): get_type_hints(cls)[f.name] for cls in SECTIONS.values() for f in fields(cls)
}

# --------------------------------------------------------------------------- loading


def load(path: str | os.PathLike[str] | None = None, *, data_dir: str | None = None) -> Config:
    """Read the configuration: embedded defaults, then the file, then ``data_dir``.

    ``path`` None means ``$SMTPGUARD_CONFIG`` if set, else :data:`SYSTEM_CONFIG`
    if it exists, else no file at all; ``data_dir`` None means
    ``$SMTPGUARD_DATA_DIR`` if set, else the file's value.
    """
    if path is None:
        path = os.environ.get(ENV_CONFIG) or None
    if path is None and SYSTEM_CONFIG.exists():
        path = SYSTEM_CONFIG
    cfg = Config()
    if path is not None:
        cfg = _load_file(Path(path))
    if data_dir is None:
        data_dir = os.environ.get(ENV_DATA_DIR) or None
    if data_dir is not None:
        cfg = cfg.with_overrides(store={"data_dir": data_dir})
    return cfg


def read_toml(path: Path, error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """A TOML file's document; an unreadable, non-UTF-8 or invalid file raises
    ``error`` naming the file (shared by the config and the classifier's rules)."""
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise error(f"{name}: cannot read: {e.strerror or e}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{name}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise error(f"{name}: invalid TOML: {e}") from None


def _load_file(path: Path) -> Config:
    name = str(path)
    doc = read_toml(path)
    sections: dict[str, Any] = {}
    written: dict[str, Any] = {}
    for table, values in doc.items():
        if table not in SECTIONS:
            known = ", ".join(SECTIONS)
            raise ConfigError(f"{name}: unknown table [{table}] (known: {known})")
        if not isinstance(values, dict):
            raise ConfigError(f"{name}: {table}: expected a table [{table}]")
        cls = SECTIONS[table]
        known_keys = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known_keys:
                raise ConfigError(
                    f"{name}: unknown key {table}.{key} (known: {', '.join(known_keys)})"
                )
            kwargs[key] = _coerce(name, f"{table}.{key}", value, known_keys[key])
            written[f"{table}.{key}"] = value
        sections[table] = _whole(name, table, cls(**kwargs))
    cfg = Config(**sections, source=name, written=written)
    check_combinations(cfg)
    return cfg


def _whole(source: str, table: str, section: Any) -> Any:
    """A section checked as a whole (keys that only make sense together)."""
    problems = section.problems() if hasattr(section, "problems") else []
    if problems:
        raise ConfigError(f"{source}: [{table}]: {problems[0]}")
    return section


# --------------------------------------------------------------------------- rendering


def toml_value(value: Any) -> str:
    """One value in TOML syntax (config rendering, and test fixtures writing configs)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a valid TOML basic string, control characters escaped included
        # (C1 and bidi controls too: the printout may go to a terminal).
        return json_text(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def render(cfg: Config, *, commented: bool = False) -> str:
    """The configuration as TOML; ``commented`` gives the example file's form.

    In the example every key is commented out with its default, and its doc
    line above it, so the file documents itself and changes nothing; a key
    whose value differs from the default (``smtpguard --data-dir /var/lib/smtpguard
    config example``, as ``make install`` writes the installed file) is left
    uncommented.
    """
    out: list[str] = []
    if commented:
        out += [
            "# smtpguard configuration. Every key is shown commented out with its default;",
            '# uncomment to change. Durations take s, m, h, d ("5d"); sizes are bytes.',
            "# Generated from smtpguard/config.py (smtpguard config example).",
            "",
        ]
    defaults = Config()
    for table, cls in SECTIONS.items():
        out.append(f"# {' '.join(cls.__doc__.split())}" if commented else "")
        out.append(f"[{table}]")
        for f in fields(cls):
            line = f"{f.name} = {toml_value(display_value(cfg, table, f))}"
            if commented:
                unit = f.metadata.get("unit")
                suffix = f" ({unit})" if unit else ""
                out.append(f"# {f.metadata['doc']}{suffix}")
                changed = getattr(getattr(cfg, table), f.name) != getattr(
                    getattr(defaults, table), f.name
                )
                out.append(line if changed else f"#{line}")
            else:
                out.append(line)
        out.append("")
    return "\n".join(out).lstrip("\n")


#: What a secret's value is printed as.
MASK = "********"


def display_value(cfg: Config, table: str, f: dataclasses.Field[Any]) -> Any:
    """A setting as the operator wrote it: durations keep their unit ("5d", not 432000.0);
    secrets masked (:data:`MASK`)."""
    value = getattr(getattr(cfg, table), f.name)
    if value and is_secret(f):
        return MASK
    if f.metadata.get("unit") != "s":
        return _unmasked(value)
    written = cfg.written.get(f"{table}.{f.name}")
    return written if written is not None else format_duration(value)


def render_example() -> str:
    return render(Config(), commented=True)
