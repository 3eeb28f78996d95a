"""The webhook calls: one keep-alive HTTP/1.1 pool per endpoint (`common.http1`), every
connection vetted by the SSRF guard.

- A pool holds at most WEBHOOK_CONCURRENCY connections (the calls this process makes to that
  endpoint at once), reused call after call; idle ones are dropped after KEEPALIVE_S.
- Every new connection resolves the host again through `ssrf.GuardedResolver` (DNS rebinding
  cannot swap in a private address), an IP literal is checked before it is connected to, and
  the URL (scheme, credentials) when its pool is made.
- A call takes at most WEBHOOK_TIMEOUT in all; its answer is read up to MAX_ANSWER bytes (then
  the connection is dropped); redirects are not followed (a 3xx is just a status).
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp.abc import AbstractResolver
from yarl import URL

from sesflow.common.http1 import Http1Pool, MaybeSent, NotSent
from sesflow.stats.webhooks.ssrf import (
    GuardedResolver,
    RefusedTarget,
    check_literal,
    check_url,
    literal,
)

USER_AGENT = "sesflow-webhooks"
MAX_ANSWER = 64 * 1024  # bytes of an answer read; receivers answer with a few
KEEPALIVE_S = 15.0


class CallFailed(Exception):
    """The call got no answer (refused target, connection, timeout, not HTTP)."""


class EndpointPools:
    def __init__(
        self,
        *,
        allow_private: bool,
        timeout: float,
        per_endpoint: int,
        resolver: AbstractResolver | None = None,  # the system's; tests give their own
    ) -> None:
        self.allow_private = allow_private
        self.timeout = timeout
        self.per_endpoint = per_endpoint
        self.resolver = GuardedResolver(allow_private, resolver)
        self.pools: dict[str, tuple[str, Http1Pool, str, str]] = {}  # id -> url, pool, host, path

    async def post(self, endpoint_id: str, url: str, headers: dict[str, str], body: bytes) -> int:
        """POST `body` to the endpoint; the answer's status, or CallFailed."""
        pool, host, path = await self._pool(endpoint_id, url)
        sent = {"host": host, "user-agent": USER_AGENT, **headers}
        try:
            async with asyncio.timeout(self.timeout):
                answer = await pool.post(path, sent, body)
        except (NotSent, MaybeSent) as exc:
            raise CallFailed(f"{exc.code}: {exc}"[:300]) from None
        except TimeoutError:
            raise CallFailed(f"Timeout: no answer within {self.timeout}s") from None
        return answer.status

    async def _pool(self, endpoint_id: str, url: str) -> tuple[Http1Pool, str, str]:
        have = self.pools.get(endpoint_id)
        if have is not None and have[0] == url:
            return have[1], have[2], have[3]
        if have is not None:
            await have[1].close()
            del self.pools[endpoint_id]
        try:
            check_url(url, self.allow_private)
        except RefusedTarget as exc:
            raise CallFailed(f"refused: {exc}") from None
        parsed = URL(url)
        pool = Http1Pool(
            parsed,
            limit=self.per_endpoint,
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            keepalive=KEEPALIVE_S,
            addresses=self.addresses,
            max_answer=MAX_ANSWER,
        )
        host, path = parsed.host_port_subcomponent or "", parsed.raw_path_qs
        self.pools[endpoint_id] = (url, pool, host, path)
        return pool, host, path

    async def addresses(self, host: str, port: int) -> list[str]:
        """Where a new connection may go: the literal, if allowed, or the host's addresses that
        the guard lets through (none: OSError, the call fails)."""
        try:
            check_literal(host, self.allow_private)
        except RefusedTarget as exc:
            raise OSError(str(exc)) from None
        if literal(host) is not None:
            return [host]
        results = await self.resolver.resolve(host, port, socket.AF_UNSPEC)
        return [str(r["host"]) for r in results]

    async def keep_only(self, endpoint_ids: set[str]) -> None:
        """Close the pools of endpoints that are gone."""
        for endpoint_id in [e for e in self.pools if e not in endpoint_ids]:
            _, pool, _, _ = self.pools.pop(endpoint_id)
            await pool.close()

    async def close(self) -> None:
        await self.keep_only(set())
        await self.resolver.close()
