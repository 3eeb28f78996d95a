"""Lua scripts live as `.lua` files in `common/lua/`, each with a header documenting KEYS and
ARGV. They are read once and registered once per client; every key goes through KEYS."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

from sesflow.common.connection import Redis


@functools.cache
def source(name: str) -> str:
    return (
        resources.files("sesflow.common").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    )


def register(client: Redis, name: str) -> Any:
    """`client.register_script` for `common/lua/<name>.lua` (EVALSHA, reloaded on NOSCRIPT)."""
    return client.register_script(source(name))
