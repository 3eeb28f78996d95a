"""One way to wait for something in a test: poll until a condition holds, and fail loudly when
it does not. A wait that returns quietly on timeout lets the check after it pass or fail for the
wrong reason; these raise `TimeoutError` naming what was awaited and the last value seen.

    await until(lambda: stub_sent(), lambda n: n == 3, what="three sends")
    value = await until(fetch_state, what="a state")   # done: the value is truthy
    until_sync(lambda: port_open(host, port), what="the port to open")

`ignore` lists exceptions that mean "not yet" (Redis restarting, a server not listening yet);
anything else propagates at once. `context` adds text to the failure (process logs). Without
`what`, the failure names the awaited function (a lambda by its source line).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypedDict, TypeVar, Unpack

T = TypeVar("T")

EVERY = 0.05


def _truthy(value: object) -> bool:
    return bool(value)


def _describe(fetch: Callable[..., object]) -> str:
    name = getattr(fetch, "__qualname__", repr(fetch))
    if name.endswith("<lambda>"):
        try:
            return inspect.getsource(fetch).strip()
        except (OSError, TypeError):
            pass
    return str(name)


class Options(TypedDict, total=False):
    """How `until` and `until_sync` wait (see the module docstring)."""

    what: str  # what is awaited, for the failure (default: the awaited function)
    within: float  # seconds (default 10)
    every: float  # seconds between tries (default EVERY)
    ignore: tuple[type[BaseException], ...]  # exceptions that mean "not yet"
    context: Callable[[], str] | None  # more text for the failure (process logs)


@dataclass(frozen=True, slots=True)
class _Wait:
    what: str = ""
    within: float = 10.0
    every: float = EVERY
    ignore: tuple[type[BaseException], ...] = ()
    context: Callable[[], str] | None = None

    def failure(
        self, fetch: Callable[..., object], value: object, error: BaseException | None
    ) -> TimeoutError:
        what = self.what or _describe(fetch)
        message = f"timed out after {self.within:g}s waiting for {what}; last value: {value!r}"
        if error is not None:
            message += f"; last error: {error!r}"
        if self.context is not None:
            message += "\n" + self.context()
        return TimeoutError(message)


async def until(
    fetch: Callable[[], Awaitable[T]],
    done: Callable[[T], bool] = _truthy,
    **options: Unpack[Options],
) -> T:
    """Await `fetch()` until `done(value)`; return that value, or raise `TimeoutError` after
    `within` seconds. `fetch` is always called at least once, and once more after the deadline."""
    wait = _Wait(**options)
    deadline = time.monotonic() + wait.within
    value: object = None
    error: BaseException | None = None
    while True:
        last_try = time.monotonic() > deadline
        try:
            result = await fetch()
        except wait.ignore as exc:
            error = exc
        else:
            if done(result):
                return result
            value, error = result, None
        if last_try:
            raise wait.failure(fetch, value, error)
        await asyncio.sleep(wait.every)


def until_sync(
    fetch: Callable[[], T],
    done: Callable[[T], bool] = _truthy,
    **options: Unpack[Options],
) -> T:
    """`until` for code without an event loop (fixtures, threads, process start-up)."""
    wait = _Wait(**options)
    deadline = time.monotonic() + wait.within
    value: object = None
    error: BaseException | None = None
    while True:
        last_try = time.monotonic() > deadline
        try:
            result = fetch()
        except wait.ignore as exc:
            error = exc
        else:
            if done(result):
                return result
            value, error = result, None
        if last_try:
            raise wait.failure(fetch, value, error)
        time.sleep(wait.every)
