"""Bearer tokens: `exp` required and at most JWT_MAX_AGE ahead; JWT_AUDIENCE / JWT_ISSUER when
set; the CLI mints tokens the API accepts."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from sesflow.cli.output import auth_headers
from sesflow.common.errors import ConfigError
from sesflow.common.http import token_problem
from sesflow.common.settings import settings_from_mapping

SECRET = "jwt-test-secret-0123456789abcdefgh"


def mint(**claims: Any) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_token_may_live_at_most_jwt_max_age(api_client: Any, make_settings: Any) -> None:
    now = int(time.time())
    async with api_client(make_settings(JWT_SECRET=SECRET)) as http:
        day = await http.get("/v1/suppressions", headers=bearer(mint(exp=now + 23 * 3600)))
        assert day.status == 200
        year = await http.get("/v1/suppressions", headers=bearer(mint(exp=now + 365 * 86400)))
        assert year.status == 401
        body = await year.json()
        assert body["error"] == "unauthorized" and "JWT_MAX_AGE" in body["detail"]
        # `exp` stays required: a token minted without one (as some Rust-era clients did).
        endless = await http.get("/v1/suppressions", headers=bearer(mint(sub="client")))
        assert endless.status == 401
        assert '"exp"' in (await endless.json())["detail"]
    async with api_client(make_settings(JWT_SECRET=SECRET, JWT_MAX_AGE=400 * 86400)) as http:
        year = await http.get("/v1/suppressions", headers=bearer(mint(exp=now + 365 * 86400)))
        assert year.status == 200


async def test_audience_and_issuer_are_required_when_set(
    api_client: Any, make_settings: Any
) -> None:
    exp = int(time.time()) + 600
    settings = make_settings(JWT_SECRET=SECRET, JWT_AUDIENCE="sesflow", JWT_ISSUER="billing")
    async with api_client(settings) as http:
        cases: list[tuple[dict[str, Any], int]] = [
            ({"aud": "sesflow", "iss": "billing"}, 200),
            ({"aud": ["other", "sesflow"], "iss": "billing"}, 200),
            ({"iss": "billing"}, 401),
            ({"aud": "sesflow"}, 401),
            ({"aud": "other", "iss": "billing"}, 401),
            ({"aud": "sesflow", "iss": "someone-else"}, 401),
        ]
        for claims, status in cases:
            resp = await http.get("/v1/suppressions", headers=bearer(mint(exp=exp, **claims)))
            assert resp.status == status, claims
    # Unset, neither claim is looked at (a token naming an audience still works).
    plain = settings_from_mapping({"JWT_SECRET": SECRET})
    assert token_problem(plain, mint(exp=exp, aud="anything", iss="anyone")) is None


def test_the_cli_token_is_accepted_under_every_jwt_setting() -> None:
    for env in (
        {},
        {"JWT_AUDIENCE": "sesflow", "JWT_ISSUER": "ops"},
        {"JWT_MAX_AGE": "600"},
    ):
        settings = settings_from_mapping({"JWT_SECRET": SECRET, **env})
        token = auth_headers(settings)["Authorization"].removeprefix("Bearer ")
        assert token_problem(settings, token) is None, env


def test_jwt_max_age_cannot_be_negative() -> None:
    with pytest.raises(ConfigError, match="JWT_MAX_AGE"):
        settings_from_mapping({"JWT_MAX_AGE": "-1"})
