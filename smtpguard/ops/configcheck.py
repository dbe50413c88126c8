"""``smtpguard config check`` beyond syntax: the files a configuration names, risky settings.

The loader (:mod:`smtpguard.config`) already rejects unknown keys, wrong types
and impossible values. What it cannot see from the file alone:

* errors: a ``classifier.rules_file`` that cannot be read or does not load (the
  relay would refuse to start), and the same for the TLS and AUTH files;
* warnings: a ``relay.trusted_networks`` entry wider than loopback and private
  address space - every client there relays without AUTH, which on a reachable
  port is an open relay.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from smtpguard.config import Config
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
    rules = cfg.classifier.rules_file
    if rules:
        from smtpguard.classify import Classifier

        try:
            Classifier.load(rules)
        except UserError as e:
            result.errors.append(f"classifier.rules_file: {e}")


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
