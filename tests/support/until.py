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
from typing import TypeVar

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


def _failure(
    what: str,
    within: float,
    value: object,
    error: BaseException | None,
    context: Callable[[], str] | None,
) -> TimeoutError:
    message = f"timed out after {within:g}s waiting for {what}; last value: {value!r}"
    if error is not None:
        message += f"; last error: {error!r}"
    if context is not None:
        message += "\n" + context()
    return TimeoutError(message)


async def until(
    fetch: Callable[[], Awaitable[T]],
    done: Callable[[T], bool] = _truthy,
    *,
    what: str = "",
    within: float = 10.0,
    every: float = EVERY,
    ignore: tuple[type[BaseException], ...] = (),
    context: Callable[[], str] | None = None,
) -> T:
    """Await `fetch()` until `done(value)`; return that value, or raise `TimeoutError` after
    `within` seconds. `fetch` is always called at least once, and once more after the deadline."""
    deadline = time.monotonic() + within
    value: object = None
    error: BaseException | None = None
    while True:
        last_try = time.monotonic() > deadline
        try:
            result = await fetch()
        except ignore as exc:
            error = exc
        else:
            if done(result):
                return result
            value, error = result, None
        if last_try:
            raise _failure(what or _describe(fetch), within, value, error, context)
        await asyncio.sleep(every)


def until_sync(
    fetch: Callable[[], T],
    done: Callable[[T], bool] = _truthy,
    *,
    what: str = "",
    within: float = 10.0,
    every: float = EVERY,
    ignore: tuple[type[BaseException], ...] = (),
    context: Callable[[], str] | None = None,
) -> T:
    """`until` for code without an event loop (fixtures, threads, process start-up)."""
    deadline = time.monotonic() + within
    value: object = None
    error: BaseException | None = None
    while True:
        last_try = time.monotonic() > deadline
        try:
            result = fetch()
        except ignore as exc:
            error = exc
        else:
            if done(result):
                return result
            value, error = result, None
        if last_try:
            raise _failure(what or _describe(fetch), within, value, error, context)
        time.sleep(every)
