"""Shaping limits as data: the shipped file overlaid by the operator's.

The shipped ``default.toml`` (in this package) holds the defaults every site
starts from, the providers (MX host-name suffixes -> one shared budget) and the
automation rules for the big providers' documented throttle replies. The
operator's file (config ``shaping.file``) overlays it the way the classifier's
rule files do: tables overlay key by key (``[defaults]``, ``[global]``,
``[adaptive]``, ``[smarthost]``, ``[provider.NAME]``), a ``[[automation]]``
rule with the ``id`` of a shipped one replaces it, ``enabled = false`` switches
a shipped provider or rule off, new ones are added (operator rules are tried
first). Every shipped provider and rule names its ``source``.

Values: ``rate`` is a message rate ``N/s``, ``N/min``, ``N/h`` or ``N/d`` (or
``""`` for none), durations are ``30s``, ``5m``, ``1h``. Any error is one line
naming the file and the key (``smtpguard shaping check FILE``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from smtpguard.config import parse_duration, read_toml
from smtpguard.errors import ConfigError


class ShapingError(ConfigError):
    """A shaping file that cannot be used (one line naming the file and the key)."""


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$")
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600,
        "hour": 3600, "d": 86400, "day": 86400}  # fmt: skip


def parse_rate(value: Any) -> float | None:
    """Messages per second from ``"20/s"``, ``"100/min"``, ``"5000/h"``; ``""``: no limit."""
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError("a rate like 100/min, 5000/h or 20/s (a string)")
    m = _RATE.match(value)
    if not m or float(m.group(1)) <= 0:
        raise ValueError("a rate like 100/min, 5000/h or 20/s")
    return float(m.group(1)) / _PER[m.group(2)]


def format_rate(per_second: float | None) -> str:
    """A rate for people: ``20/s``, ``100/min``, ``5000/h``; ``-`` for none."""
    if per_second is None:
        return "-"
    units = (("s", 1), ("min", 60), ("h", 3600), ("d", 86400))
    for unit, secs in units:  # the unit that makes it a whole number, as it was written
        n = per_second * secs
        if n >= 1 and abs(n - round(n)) < 1e-6 * n:
            return f"{round(n)}/{unit}"
    for unit, secs in units:
        n = per_second * secs
        if n >= 1:
            return f"{n:.3g}/{unit}"
    return f"{per_second * 86400:.3g}/d"


@dataclass(frozen=True)
class SiteLimits:
    """What one site may get. ``rate`` None: no message rate limit."""

    connections: int = 10
    messages_per_connection: int = 100
    rate: float | None = None  # messages per second
    burst: int = 1
    recipients: int = 50

    @property
    def backlog(self) -> int:
        return backlog(self.rate, self.connections)


def backlog(rate: float | None, connections: int) -> int:
    """How many claimed jobs may wait in a site's line before more are postponed:
    thirty seconds of sending at the rate, at least what the connections can take."""
    floor = max(20, 10 * connections)
    if rate is None:
        return min(floor, 1000)
    return min(max(2 * connections, math.ceil(rate * 30)), max(floor, 1000))


@dataclass(frozen=True)
class Provider:
    """MX hosts under these suffixes are one site, with these limits."""

    name: str
    suffixes: tuple[str, ...]
    limits: SiteLimits
    source: str = ""


@dataclass(frozen=True)
class Adaptive:
    """The AIMD controller's settings (see :mod:`smtpguard.shaping.controller`)."""

    decrease: float = 0.75
    recover: float = 30.0
    min_rate: float = 1 / 60
    cooldown: float = 1.0
    suspend_after: int = 5
    suspend_for: float = 300.0
    jitter: float = 0.2


@dataclass(frozen=True)
class AutomationRule:
    """A reply regex -> an action on the site for a while (KumoMTA's TSA idea)."""

    id: str
    match: str
    action: str  # suspend | rate | connections
    duration: float
    rate: float | None = None  # for action = rate
    connections: int = 0  # for action = connections
    sites: tuple[str, ...] = ()  # empty: any site
    source: str = ""


@dataclass(frozen=True)
class ShapingRules:
    """Everything the shaper reads, merged and validated."""

    defaults: SiteLimits = field(default_factory=SiteLimits)
    smarthost: SiteLimits = field(default_factory=SiteLimits)
    providers: tuple[Provider, ...] = ()
    global_rate: float | None = None
    global_burst: int = 1
    adaptive: Adaptive = field(default_factory=Adaptive)
    automation: tuple[AutomationRule, ...] = ()
    files: tuple[str, ...] = ()


TOP_KEYS = ("defaults", "global", "adaptive", "smarthost", "provider", "automation")
LIMIT_KEYS = ("connections", "messages_per_connection", "rate", "burst", "recipients")
PROVIDER_KEYS = (*LIMIT_KEYS, "suffixes", "source", "note", "enabled")
ADAPTIVE_KEYS = ("decrease", "recover", "min_rate", "cooldown", "suspend_after", "suspend_for",
                 "jitter")  # fmt: skip
RULE_KEYS = ("id", "match", "action", "value", "duration", "sites", "source", "note", "enabled")
ACTIONS = ("suspend", "rate", "connections")
#: The longest text an automation regex is searched in (replies are bounded anyway).
MAX_REPLY = 512
#: Site names a provider may not take (they name other sites).
RESERVED = ("smarthost", "dsn")


def shipped_path() -> Path:
    return Path(str(resources.files("smtpguard.shaping").joinpath("default.toml")))


def load(operator: str | Path | None = None, *, messages_per_connection: int = 0) -> ShapingRules:
    """The shipped file overlaid by ``operator`` (if given). Raises :class:`ShapingError`.

    ``messages_per_connection`` (``delivery.messages_per_connection``) is the
    default when no file sets one.
    """
    shipped = _read(shipped_path())
    _require_sources(str(shipped_path()), shipped)
    files = [str(shipped_path())]
    doc = shipped
    if operator:
        name = str(operator)
        if Path(name).resolve() != shipped_path().resolve():
            doc = _overlay(doc, _read(Path(name)), name)
            files.append(name)
    return _build(doc, " + ".join(files), tuple(files), messages_per_connection)


def check_file(path: str | Path) -> ShapingRules:
    """Validate ``path`` as an operator file (overlaid on the shipped one)."""
    return load(path)


def _read(path: Path) -> dict[str, Any]:
    doc = read_toml(path, ShapingError)
    name = str(path)
    for key, value in doc.items():
        if key not in TOP_KEYS:
            raise ShapingError(f"{name}: unknown top-level key {key!r} (known: "
                               f"{', '.join(TOP_KEYS)})")  # fmt: skip
        if key == "automation":
            if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
                raise ShapingError(f"{name}: automation: must be an array of tables [[automation]]")
        elif not isinstance(value, dict):
            raise ShapingError(f"{name}: {key}: must be a table [{key}]")
    for pname, table in doc.get("provider", {}).items():
        if not isinstance(table, dict):
            raise ShapingError(f"{name}: provider.{pname}: must be a table [provider.{pname}]")
    # Validate the file's own values now, so an error names the file that has it.
    _build(doc, name, (name,), 0, partial=True)
    return doc


def _overlay(base: dict[str, Any], top: dict[str, Any], name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("defaults", "global", "adaptive", "smarthost"):
        out[key] = {**base.get(key, {}), **top.get(key, {})}
    providers = {k: dict(v) for k, v in base.get("provider", {}).items()}
    for pname, table in top.get("provider", {}).items():
        providers[pname] = {**providers.get(pname, {}), **table}
        if pname not in base.get("provider", {}):
            providers[pname].setdefault("_operator", name)
    out["provider"] = providers
    ops = list(top.get("automation", []))
    op_ids = {r.get("id") for r in ops}
    shipped = [r for r in base.get("automation", []) if r.get("id") not in op_ids]
    out["automation"] = ops + shipped
    return out


def _require_sources(name: str, doc: dict[str, Any]) -> None:
    for pname, table in doc.get("provider", {}).items():
        if table.get("enabled", True) and not table.get("source"):
            raise ShapingError(f"{name}: provider.{pname}.source: shipped providers name the"
                               " document of their MX host names or limits")  # fmt: skip
    for n, rule in enumerate(doc.get("automation", []), 1):
        if rule.get("enabled", True) and not rule.get("source"):
            raise ShapingError(f"{name}: automation #{n} ({rule.get('id', '?')}).source: shipped"
                               " rules name the document of the reply they match")  # fmt: skip


def _build(
    doc: dict[str, Any], name: str, files: tuple[str, ...], mpc: int, *, partial: bool = False
) -> ShapingRules:
    base = SiteLimits(messages_per_connection=mpc) if mpc > 0 else SiteLimits()
    defaults = _limits(name, "defaults", doc.get("defaults", {}), base, LIMIT_KEYS)
    smarthost = _limits(name, "smarthost", doc.get("smarthost", {}), defaults, LIMIT_KEYS)
    providers = []
    seen_suffix: dict[str, str] = {}
    for pname, table in doc.get("provider", {}).items():
        where = f"provider.{pname}"
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", pname) or pname in RESERVED:
            raise ShapingError(f"{name}: {where}: a provider name is lower-case letters, digits,"
                               " '-', '_' or '.' (not smarthost or dsn)")  # fmt: skip
        table = {k: v for k, v in table.items() if k != "_operator"}
        _known(name, where, table, PROVIDER_KEYS)
        enabled = table.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ShapingError(f"{name}: {where}.enabled: must be true or false")
        if not enabled:
            continue
        limits = _limits(name, where, {k: v for k, v in table.items() if k in LIMIT_KEYS},
                         defaults, LIMIT_KEYS)  # fmt: skip
        suffixes = table.get("suffixes")
        if suffixes is None and partial:
            suffixes = []
        if not isinstance(suffixes, list) or (not suffixes and not partial):
            raise ShapingError(f"{name}: {where}.suffixes: a non-empty list of MX host-name"
                               ' suffixes like ".google.com"')  # fmt: skip
        clean = []
        for s in suffixes:
            if not isinstance(s, str) or not re.fullmatch(r"\.?[a-z0-9-]+(\.[a-z0-9-]+)+\.?",
                                                          s.strip().lower()):  # fmt: skip
                raise ShapingError(f"{name}: {where}.suffixes: {s!r} is not a host-name suffix"
                                   ' like ".google.com"')  # fmt: skip
            suffix = "." + s.strip().lower().strip(".")
            if suffix in seen_suffix and not partial:
                raise ShapingError(f"{name}: {where}.suffixes: {s!r} is also provider "
                                   f"{seen_suffix[suffix]!r}'s")  # fmt: skip
            seen_suffix[suffix] = pname
            clean.append(suffix)
        source = table.get("source", "")
        if not isinstance(source, str):
            raise ShapingError(f"{name}: {where}.source: must be a string")
        providers.append(Provider(pname, tuple(clean), limits, source))
    gtable = doc.get("global", {})
    _known(name, "global", gtable, ("rate", "burst"))
    global_rate = _value(name, "global.rate", gtable.get("rate", ""), parse_rate)
    global_burst = _int(name, "global.burst", gtable.get("burst", 1))
    adaptive = _adaptive(name, doc.get("adaptive", {}))
    rules = []
    ids: set[str] = set()
    for n, raw in enumerate(doc.get("automation", []), 1):
        rule = _rule(name, n, raw)
        if rule is None:
            continue
        if rule.id in ids:
            raise ShapingError(f"{name}: automation #{n}.id: duplicate id {rule.id!r}")
        ids.add(rule.id)
        rules.append(rule)
    return ShapingRules(defaults, smarthost, tuple(providers), global_rate, global_burst,
                        adaptive, tuple(rules), files)  # fmt: skip


def _known(name: str, where: str, table: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in table:
        if key not in keys:
            raise ShapingError(f"{name}: {where}.{key}: unknown key (known: {', '.join(keys)})")


def _value(name: str, key: str, value: Any, parse: Any) -> Any:
    try:
        return parse(value)
    except (ValueError, TypeError) as e:
        raise ShapingError(f"{name}: {key}: {value!r} is not {e}") from None


def _int(name: str, key: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ShapingError(f"{name}: {key}: {value!r} is not a whole number >= {low}")
    return value


def _limits(
    name: str, where: str, table: dict[str, Any], base: SiteLimits, keys: tuple[str, ...]
) -> SiteLimits:
    if not isinstance(table, dict):
        raise ShapingError(f"{name}: {where}: must be a table")
    _known(name, where, table, keys)
    changes: dict[str, Any] = {}
    for key in ("connections", "messages_per_connection", "burst", "recipients"):
        if key in table:
            changes[key] = _int(name, f"{where}.{key}", table[key])
    if "rate" in table:
        changes["rate"] = _value(name, f"{where}.rate", table["rate"], parse_rate)
    return replace(base, **changes)


def _adaptive(name: str, table: dict[str, Any]) -> Adaptive:
    _known(name, "adaptive", table, ADAPTIVE_KEYS)
    a = Adaptive()
    changes: dict[str, Any] = {}
    for key in ("decrease", "jitter"):
        if key in table:
            v = table[key]
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not ok or not (0 < v < 1 if key == "decrease" else 0 <= v <= 1):
                raise ShapingError(
                    f"{name}: adaptive.{key}: {v!r} is not a fraction "
                    f"{'between 0 and 1' if key == 'decrease' else '0 to 1'}"
                )
            changes[key] = float(v)
    for key in ("recover", "cooldown", "suspend_for"):
        if key in table:
            v = _value(name, f"adaptive.{key}", table[key], _duration)
            changes[key] = v
    if "min_rate" in table:
        v = _value(name, "adaptive.min_rate", table["min_rate"], parse_rate)
        if v is None:
            raise ShapingError(f"{name}: adaptive.min_rate: must be a rate like 1/min")
        changes["min_rate"] = v
    if "suspend_after" in table:
        changes["suspend_after"] = _int(name, "adaptive.suspend_after", table["suspend_after"])
    return replace(a, **changes)


def _duration(value: Any) -> float:
    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError):
        raise ValueError("a duration like 30s, 5m or 1h") from None
    if seconds <= 0:
        raise ValueError("a duration like 30s, 5m or 1h (above zero)")
    return seconds


def _rule(name: str, n: int, raw: dict[str, Any]) -> AutomationRule | None:
    rid = raw.get("id", "")
    where = f"automation #{n}" + (f" ({rid})" if rid else "")
    _known(name, where, raw, RULE_KEYS)
    if not isinstance(rid, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", rid):
        raise ShapingError(f"{name}: {where}.id: a short name (letters, digits, . _ : -)")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ShapingError(f"{name}: {where}.enabled: must be true or false")
    if not enabled:
        return None
    pattern = raw.get("match")
    if not isinstance(pattern, str) or not pattern:
        raise ShapingError(f"{name}: {where}.match: a regular expression (string) is required")
    from smtpguard.classify.rules import regex_risk

    try:
        re.compile(pattern, re.IGNORECASE)
    except re.error as e:
        raise ShapingError(f"{name}: {where}.match: not a regular expression: {e}") from None
    risk = regex_risk(pattern)
    if risk:
        raise ShapingError(f"{name}: {where}.match: {risk}")
    action = raw.get("action")
    if action not in ACTIONS:
        raise ShapingError(f"{name}: {where}.action: {action!r} is not one of "
                           f"{', '.join(ACTIONS)}")  # fmt: skip
    if "duration" not in raw:
        raise ShapingError(f"{name}: {where}.duration: required (how long the action lasts)")
    duration = _value(name, f"{where}.duration", raw["duration"], _duration)
    rate: float | None = None
    connections = 0
    if action == "rate":
        rate = _value(name, f"{where}.value", raw.get("value", ""), parse_rate)
        if rate is None:
            raise ShapingError(f"{name}: {where}.value: action rate needs a rate like 10/min")
    elif action == "connections":
        connections = _int(name, f"{where}.value", raw.get("value"))
    elif "value" in raw:
        raise ShapingError(f"{name}: {where}.value: action suspend takes no value")
    sites = raw.get("sites", [])
    if not isinstance(sites, list) or not all(isinstance(s, str) and s for s in sites):
        raise ShapingError(f"{name}: {where}.sites: a list of site names")
    source = raw.get("source", "")
    if not isinstance(source, str):
        raise ShapingError(f"{name}: {where}.source: must be a string")
    return AutomationRule(rid, pattern, action, duration, rate, connections, tuple(sites), source)
