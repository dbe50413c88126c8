"""Which site a delivery goes to, decided after routing.

A site is the unit a budget belongs to: every domain whose most preferred MX
ends in one provider's suffix is that provider's site (``google``,
``microsoft``...), everything sent through the smarthost is ``smarthost``,
the DSNs to the local Postfix are ``dsn``, and any other domain's site is its
MX host set (``mx:mx1.example.net,mx2.example.net``), so domains hosted on
one unknown server still share one budget. Non-standard ports are part of the
key (``mx:127.0.0.1:2525``): they are different servers.

The provider is read from the most preferred hop: a domain with Google as its
primary MX and its own backup is Google's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from smtpguard.shaping.limits import Provider, ShapingRules

if TYPE_CHECKING:
    from smtpguard.relay.routing import NextHop

#: The longest site key kept (an MX set of many long names is cut, with a count).
MAX_KEY = 200


class SiteMap:
    """Hops -> site key, with the provider suffixes of the shaping rules."""

    def __init__(self, rules: ShapingRules, default_port: int = 25) -> None:
        self._providers = rules.providers
        self._default_port = default_port

    def provider(self, host: str) -> Provider | None:
        """The provider whose suffix ``host`` ends in (whole labels), if any."""
        name = "." + host.lower().rstrip(".")
        for p in self._providers:
            for suffix in p.suffixes:
                if name.endswith(suffix):
                    return p
        return None

    def site(self, destination: str, hops: Sequence[NextHop]) -> str:
        """The site key for ``destination`` (``"dsn"``, ``"smarthost"`` or a domain)
        now that it routed to ``hops`` (most preferred first)."""
        if destination in ("dsn", "smarthost"):
            return destination
        if not hops:
            return f"mx:{destination}"
        first = hops[0]
        if first.source == "smarthost":
            return "smarthost"
        p = self.provider(first.host)
        if p is not None:
            return p.name
        names = sorted({self._endpoint(h) for h in hops})
        key = "mx:" + ",".join(names)
        if len(key) > MAX_KEY:
            key = f"{key[: MAX_KEY - 12]}...+{len(names)}"
        return key

    def _endpoint(self, hop: NextHop) -> str:
        host = hop.host.lower().rstrip(".")
        return host if hop.port == self._default_port else f"{host}:{hop.port}"
