"""Which mail provider a bounce came from: remote host or recipient domain -> provider name.

Providers word the same failure their own way (Gmail's "receiving mail too quickly", Yahoo's
"[TSS04] ... unexpected volume or user complaints", Microsoft's 5.7.x family), and a few of
their phrases mean something else elsewhere. ``rules/providers.toml`` maps host-name
suffixes (the MX or the remote MTA that answered) and recipient domains to a provider name;
rules carrying ``providers = [...]`` are tried first for those providers
(:meth:`smtpguard.classify.rules.RuleSet.match`). The idea is Sisimai's "rhost" (remote host
tables); the table here is this project's own, each entry naming where the provider
documents its host names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from smtpguard.config import read_toml
from smtpguard.errors import ConfigError

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,79}")
_SUFFIX_RE = re.compile(r"[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63}){0,10}")
# Host names a reply or a DSN mentions: "host mx.example.com[192.0.2.1] said", "by mx...".
_HOST_RE = re.compile(r"[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63}){1,10}")
_KEYS = frozenset({"name", "hosts", "domains", "source", "note"})


class ProvidersError(ConfigError):
    """The provider table cannot be used (bad TOML, unknown key, malformed suffix)."""


@dataclass(slots=True)
class Providers:
    """Suffix tables; lookups walk a name's labels from the right (a handful of dict hits)."""

    hosts: dict[str, str] = field(default_factory=dict)
    domains: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    #: Answers already computed, by host label / domain (bounded: cleared when full).
    _seen: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.sources)

    def of_host(self, host: str) -> str:
        """Provider owning ``host`` (a name, a "name[addr]:port" label, or "dns; name")."""
        if not host:
            return ""
        key = "h:" + host[:300]
        found = self._seen.get(key)
        if found is None:
            found = ""
            for m in _HOST_RE.finditer(host[:300].lower()):
                found = _suffix_lookup(self.hosts, m.group(0))
                if found:
                    break
            self._remember(key, found)
        return found

    def of_domain(self, address: str) -> str:
        """Provider hosting the mailbox ``address`` (by its domain)."""
        domain = address.rpartition("@")[2].lower().strip(" >.")
        if not domain:
            return ""
        key = "d:" + domain[:255]
        found = self._seen.get(key)
        if found is None:
            found = _suffix_lookup(self.domains, domain)
            self._remember(key, found)
        return found

    def _remember(self, key: str, value: str) -> None:
        if len(self._seen) >= 4096:
            self._seen.clear()
        self._seen[key] = value

    def identify(self, remote_host: str, recipient: str, text: str = "") -> str:
        """The remote host's provider, else one named in the text's host names, else the
        recipient domain's. A relay or gateway in between answers for itself, so the
        remote host comes first."""
        return self.identify_source(remote_host, recipient, text)[0]

    def identify_source(self, remote_host: str, recipient: str, text: str = "") -> tuple[str, str]:
        """(provider, how it was found): ``"host"`` (the remote host / reporting MTA),
        ``"text"`` (a host the reply names as the one that answered), ``"domain"`` (only
        the recipient's domain: the provider hosts the mailbox, but someone else may have
        answered), or ("", "")."""
        found = self.of_host(remote_host)
        if found:
            return found, "host"
        found = self._of_text(text) if text else ""
        if found:
            return found, "text"
        found = self.of_domain(recipient)
        return (found, "domain") if found else ("", "")

    def clear_caches(self) -> None:
        self._seen.clear()

    def _of_text(self, text: str) -> str:
        """A host the reporting MTA names as the one that answered: "host mx.x.example[...]
        said" (Postfix), "host mx.x.example [...]:" (Exim), "from mx.x.example" (others)."""
        low = text[:400].lower()
        for word in ("host ", "from "):
            at = low.find(word)
            if at >= 0:
                m = _HOST_RE.match(low, at + len(word))
                if m:
                    found = _suffix_lookup(self.hosts, m.group(0))
                    if found:
                        return found
        return ""


def _suffix_lookup(table: dict[str, str], name: str) -> str:
    labels = name.strip(".").split(".")
    for i in range(len(labels) - 1):
        hit = table.get(".".join(labels[i:]))
        if hit:
            return hit
    return ""


def shipped_path() -> Path:
    return Path(str(resources.files("smtpguard.classify").joinpath("rules/providers.toml")))


def load(path: Path | None = None) -> Providers:
    """The provider table (shipped by default). Raises :class:`ProvidersError`."""
    path = path or shipped_path()
    doc = read_toml(path, ProvidersError)
    return parse(str(path), doc)


def parse(name: str, doc: dict[str, Any]) -> Providers:
    out = Providers()
    raw = doc.get("provider", [])
    if set(doc) - {"provider"} or not isinstance(raw, list):
        raise ProvidersError(f"{name}: expected only [[provider]] tables")
    for n, entry in enumerate(raw, 1):
        where = f"{name}: provider #{n}"
        if not isinstance(entry, dict) or set(entry) - _KEYS:
            raise ProvidersError(f"{where}: known keys are {', '.join(sorted(_KEYS))}")
        pname = entry.get("name", "")
        if not isinstance(pname, str) or not _NAME_RE.fullmatch(pname):
            raise ProvidersError(f"{where}: 'name' must be a lower-case identifier")
        source = entry.get("source", "")
        if not isinstance(source, str) or not source.strip():
            raise ProvidersError(f"{where} ({pname}): 'source' is required")
        out.sources[pname] = source
        for key, table in (("hosts", out.hosts), ("domains", out.domains)):
            values = entry.get(key, [])
            if not isinstance(values, list):
                raise ProvidersError(f"{where} ({pname}): {key} must be a list")
            for v in values:
                if not isinstance(v, str) or not _SUFFIX_RE.fullmatch(v.lower()):
                    raise ProvidersError(f"{where} ({pname}): {key}: bad name {v!r}")
                table[v.lower()] = pname
    return out
