"""``smtpguard config check`` beyond syntax: the files a configuration names, risky settings.

The loader (:mod:`smtpguard.config`) already rejects unknown keys, wrong types
and impossible values. What it cannot see from the file alone:

* errors: a ``classifier.rules_file`` that cannot be read or does not load (the
  relay would refuse to start), and the same for the TLS and AUTH files; a
  delivery log to a file (``log.destination = "file"``) without ``log.file`` or
  in a directory that does not exist; the key files of the signed return paths
  (``intake.secret_file``, ``intake.previous_secret_file``: missing, empty, too
  short, readable by everyone) and of the webhooks (``webhooks.postmark_password_file``),
  which the relay, the milter and the webhook listener read at start;
* warnings: a ``relay.trusted_networks`` entry wider than loopback and private
  address space - every client there relays without AUTH, which on a reachable
  port is an open relay; a file holding a secret (``smarthost_password``...)
  that others may read.

Secrets are never printed: :func:`smtpguard.config.render` masks them.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from smtpguard.config import Config, secret_file_warnings
from smtpguard.errors import UserError

#: Networks a relay may trust without AUTH: loopback, RFC 1918, RFC 4193 ULA.
SAFE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


@dataclass
class Audit:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def audit(cfg: Config) -> Audit:
    result = Audit()
    _files(cfg, result)
    _trusted_networks(cfg, result)
    result.warnings += secret_file_warnings(cfg)
    return result


def _files(cfg: Config, result: Audit) -> None:
    for key, path in (
        ("relay.auth_users_file", cfg.relay.auth_users_file),
        ("relay.tls_cert", cfg.relay.tls_cert),
        ("relay.tls_key", cfg.relay.tls_key),
    ):
        if path and not os.access(path, os.R_OK):
            why = "no such file" if not os.path.exists(path) else "permission denied"
            result.errors.append(f"{key}: cannot read {path}: {why}")
    if cfg.relay.tls_key and not cfg.relay.tls_cert:
        result.errors.append("relay.tls_key is set but relay.tls_cert is empty")
    ca_file = cfg.delivery.smarthost_tls_ca_file
    if ca_file:
        from smtpguard.relay.tlspolicy import TLSPolicy, TLSPolicyError

        try:
            TLSPolicy("required", ca_file=ca_file).context()
        except TLSPolicyError as e:
            result.errors.append(f"delivery.smarthost_tls_ca_file: {e}")
    _log_file(cfg, result)
    _secret_files(cfg, result)
    rules = cfg.classifier.rules_file
    if rules:
        from smtpguard.classify import Classifier

        try:
            Classifier.load(rules)
        except UserError as e:
            result.errors.append(f"classifier.rules_file: {e}")


def _log_file(cfg: Config, result: Audit) -> None:
    """The delivery log's file: named when it is the destination, in a directory that exists
    (checked, not created: the relay opens it for appending at start)."""
    if cfg.log.destination != "file":
        return
    if not cfg.log.file:
        result.errors.append('log.file: empty, but log.destination is "file"')
        return
    directory = os.path.dirname(os.path.abspath(cfg.log.file))
    if not os.path.isdir(directory):
        result.errors.append(f"log.file: cannot write {cfg.log.file}: no such directory")


def _secret_files(cfg: Config, result: Audit) -> None:
    """The keys a process reads at start, read the same way (each error names its key)."""
    from smtpguard.errors import ConfigError
    from smtpguard.intake.keys import secret_setting
    from smtpguard.intake.verp import SignedVerpCodec

    w = cfg.webhooks
    for check in (
        lambda: SignedVerpCodec.from_config(cfg.intake),
        lambda: secret_setting(
            w.postmark_password, w.postmark_password_file, "webhooks.postmark_password"
        ),
    ):
        try:
            check()
        except ConfigError as e:
            result.errors.append(str(e))


def _trusted_networks(cfg: Config, result: Audit) -> None:
    for text in cfg.relay.trusted_networks:
        net = ipaddress.ip_network(text, strict=False)
        if not any(net.version == safe.version and net.subnet_of(safe) for safe in SAFE_NETWORKS):
            result.warnings.append(
                f"relay.trusted_networks: {text} is wider than loopback and private networks;"
                " every client there relays without AUTH (an open relay if the port is"
                " reachable): list only your own hosts, or have them log in"
                " (relay.auth_users_file)"
            )
