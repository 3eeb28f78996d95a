"""The registry routes (4xx JSON for bad input) and the SSRF guard."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sesflow.common.settings import Settings
from sesflow.stats.api import create_app
from sesflow.stats.webhooks.ssrf import (
    GuardedResolver,
    RefusedTarget,
    check_resolves,
    check_url,
    forbidden,
)

from support.apptest import AppTestServer

REFUSED = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # shared address space
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
]


@pytest.mark.parametrize("address", REFUSED)
def test_private_and_special_addresses_are_refused(address: str) -> None:
    assert forbidden(ipaddress.ip_address(address))
    with pytest.raises(RefusedTarget):
        check_url(f"https://{'[' + address + ']' if ':' in address else address}/x", False)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
def test_public_addresses_pass(address: str) -> None:
    assert not forbidden(ipaddress.ip_address(address))


def test_urls() -> None:
    with pytest.raises(RefusedTarget, match="https"):
        check_url("http://example.com/hook", False)
    assert check_url("http://127.0.0.1:9/hook", True) == "127.0.0.1"
    for bad in ("ftp://example.com/", "https:///nohost", "https://u:p@example.com/"):
        with pytest.raises(RefusedTarget):
            check_url(bad, False)


async def test_a_name_resolving_to_loopback_is_refused_at_registration_and_connect() -> None:
    with pytest.raises(RefusedTarget, match="private"):
        await check_resolves("localhost", False)
    resolver = GuardedResolver(allow_private=False)
    try:
        with pytest.raises(OSError, match="private"):
            await resolver.resolve("localhost", 80, socket.AF_INET)
    finally:
        await resolver.close()
    allowed = GuardedResolver(allow_private=True)
    try:
        assert await allowed.resolve("localhost", 80, socket.AF_INET)
    finally:
        await allowed.close()


async def api(settings: Settings) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(AppTestServer(create_app(settings)))
    await client.start_server()
    return client


async def test_registration_refuses_private_targets_without_the_flag(
    make_settings: Callable[..., Settings],
) -> None:
    client = await api(make_settings())
    try:
        for url in ("https://127.0.0.1/hook", "https://localhost/hook", "http://example.com/"):
            res = await client.post("/v1/webhooks", json={"url": url, "events": ["*"]})
            assert res.status in (400, 422), url
            assert (await res.json())["error"] == "invalid_url"
    finally:
        await client.close()


async def test_crud_and_bad_input(make_settings: Callable[..., Settings]) -> None:
    client = await api(make_settings(WEBHOOK_ALLOW_PRIVATE="1"))
    try:
        url = "http://127.0.0.1:9/hook"
        for body, error in (
            ({"url": url, "events": ["nope"]}, "invalid_events"),
            ({"url": url, "events": []}, "invalid_events"),
            ({"url": url, "events": ["*", "sent"]}, "invalid_events"),
            ({"url": url}, "invalid_json"),
            ({"url": url, "events": ["*"], "extra": 1}, "invalid_json"),
            ({"url": "", "events": ["*"]}, "invalid_url"),
        ):
            res = await client.post("/v1/webhooks", json=body)
            assert res.status == 400, body
            assert (await res.json())["error"] == error
        res = await client.post("/v1/webhooks", data=b"{not json")
        assert res.status == 400
        res = await client.post(
            "/v1/webhooks", json={"url": url, "events": ["email.bounced", "delivered"]}
        )
        assert res.status == 201
        created = await res.json()
        assert created["events"] == ["bounced", "delivered"]
        eid = created["id"]
        shown = await (await client.get(f"/v1/webhooks/{eid}")).json()
        assert shown["url"] == url and "secret" not in shown
        listing = await (await client.get("/v1/webhooks")).json()
        assert [w["id"] for w in listing["webhooks"]] == [eid]
        assert (await client.post(f"/v1/webhooks/{eid}/enable")).status == 200
        assert (await client.delete(f"/v1/webhooks/{eid}")).status == 200
        for method, path in (
            ("GET", f"/v1/webhooks/{eid}"),
            ("DELETE", f"/v1/webhooks/{eid}"),
            ("POST", f"/v1/webhooks/{eid}/rotate"),
        ):
            res = await client.request(method, path)
            assert res.status == 404
            assert (await res.json())["error"] == "not_found"
    finally:
        await client.close()


async def test_the_webhook_routes_need_the_stats_credentials(
    make_settings: Callable[..., Settings],
) -> None:
    """Registering a target or reading its secret is an operator's act: never open."""
    client = await api(make_settings(API_KEY="webhooks-test-key-0123456789"))
    try:
        for method, path in (
            ("POST", "/v1/webhooks"),
            ("GET", "/v1/webhooks"),
            ("GET", "/v1/webhooks/w1"),
            ("DELETE", "/v1/webhooks/w1"),
            ("POST", "/v1/webhooks/w1/rotate"),
            ("POST", "/v1/webhooks/w1/enable"),
        ):
            res = await client.request(method, path, json={"url": "https://example.com/h"})
            assert res.status == 401, (method, path)
            assert (await res.json())["error"]
        res = await client.get(
            "/v1/webhooks", headers={"x-api-key": "webhooks-test-key-0123456789"}
        )
        assert res.status == 200
    finally:
        await client.close()
