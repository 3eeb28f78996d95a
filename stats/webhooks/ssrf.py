"""The SSRF guard: webhooks never reach private, loopback, link-local, multicast, reserved or
unspecified addresses (IPv4 and IPv6, IPv4-mapped/6to4/Teredo/NAT64 included) unless
WEBHOOK_ALLOW_PRIVATE=1.

Checked twice: when an endpoint is registered (the host must resolve, and only to public
addresses), and at every connection, through `GuardedResolver` (the deliverer's pools resolve
through it, `pools`, so a name that resolves to a public address at registration and to
127.0.0.1 later, DNS rebinding, is still refused) and `check_literal` (an IP literal is not
resolved).
Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")
RESOLVE_TIMEOUT_S = 5.0


class RefusedTarget(Exception):
    """The URL must not be called (scheme, host, or an address it resolves to)."""


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def forbidden(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None and forbidden(inner):
            return True
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def check_literal(host: str, allow_private: bool) -> None:
    ip = literal(host)
    if ip is not None and not allow_private and forbidden(ip):
        raise RefusedTarget(f"{host} is a private or reserved address")


def check_url(url: str, allow_private: bool) -> str:
    """The URL's host, or RefusedTarget: https (http only with private targets allowed), a
    host, no credentials in it."""
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise RefusedTarget(f"the URL must use {' or '.join(schemes)}")
    if not parts.hostname:
        raise RefusedTarget("the URL has no host")
    if parts.username or parts.password:
        raise RefusedTarget("the URL must not carry credentials")
    try:
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as exc:
        raise RefusedTarget(f"bad port: {exc}") from None
    check_literal(parts.hostname, allow_private)
    return parts.hostname


async def check_resolves(host: str, allow_private: bool) -> None:
    """At registration: the host resolves, and to no forbidden address."""
    if allow_private or literal(host) is not None:
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, 443, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S
        )
    except (OSError, TimeoutError) as exc:
        raise RefusedTarget(f"{host} does not resolve: {exc}") from None
    for info in infos:
        ip = literal(str(info[4][0]))
        if ip is None or forbidden(ip):
            raise RefusedTarget(f"{host} resolves to a private or reserved address ({ip})")


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, minus every forbidden address; none left is a connection error."""

    def __init__(self, allow_private: bool, inner: AbstractResolver | None = None) -> None:
        self.allow_private = allow_private
        self.inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if self.allow_private:
            return results
        allowed = [r for r in results if not _forbidden_result(r)]
        if not allowed:
            raise OSError(f"{host} resolves only to private or reserved addresses")
        return allowed

    async def close(self) -> None:
        await self.inner.close()


def _forbidden_result(result: Any) -> bool:
    ip = literal(str(result["host"]))
    return ip is None or forbidden(ip)
