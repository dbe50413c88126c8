"""Bounded HTTPS GETs to Amazon SNS: signing certificates and subscription confirmations.

Only ``https`` URLs on an SNS host (``sns.<region>.amazonaws.com``, ``.com.cn`` in
China) are ever fetched, certificates verified against the system's trust store, no
redirects followed, at most :data:`MAX_BYTES` read and :data:`TIMEOUT` seconds spent:
a forged notification can make us fetch nothing but AWS's own pages.

:class:`HttpsFetcher` takes an ``ssl`` context and an aiohttp resolver so that tests can
serve "sns.us-east-1.amazonaws.com" from a loopback port with a test CA; production
uses neither.
"""

from __future__ import annotations

import re
import ssl as _ssl
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import aiohttp
    from aiohttp.abc import AbstractResolver

#: Hosts Amazon SNS signs and confirms from (one per region).
SNS_HOST = re.compile(r"sns\.[a-z0-9-]{1,40}\.amazonaws\.com(\.cn)?")
TIMEOUT = 10.0
MAX_BYTES = 64 * 1024


class FetchError(Exception):
    """The URL is not one we fetch, or fetching it failed (the message says which)."""


def check_sns_url(url: str, *, what: str) -> str:
    """``url`` if it is ``https://sns.<region>.amazonaws.com/...``, else FetchError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise FetchError(f"{what}: not a URL") from None
    if parts.scheme != "https" or parts.username or parts.password or port not in (None, 443):
        raise FetchError(f"{what}: only https on the default port is accepted")
    if not SNS_HOST.fullmatch(parts.hostname or ""):
        raise FetchError(f"{what}: {parts.hostname!r} is not an Amazon SNS host")
    return url


class Fetch(Protocol):
    async def __call__(self, url: str) -> bytes: ...


class HttpsFetcher:
    """GET over verified TLS with a time and size limit; one session, closed by ``close``."""

    def __init__(
        self,
        *,
        ssl: _ssl.SSLContext | None = None,
        resolver: AbstractResolver | None = None,
        timeout: float = TIMEOUT,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self._ssl = ssl or _ssl.create_default_context()
        self._resolver = resolver
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, url: str) -> bytes:
        import aiohttp

        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl, resolver=self._resolver)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        try:
            async with self._session.get(url, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise FetchError(f"GET {url}: HTTP {resp.status}")
                body = await resp.content.read(self._max_bytes + 1)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise FetchError(f"GET {url}: {type(e).__name__}: {e}") from None
        if len(body) > self._max_bytes:
            raise FetchError(f"GET {url}: more than {self._max_bytes} bytes")
        return body

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
