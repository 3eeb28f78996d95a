"""Sentry is initialised only when SENTRY_DSN is set."""

from __future__ import annotations

from typing import Any

from common.settings import Settings


def init_sentry(settings: Settings, role: str) -> None:
    if not settings.sentry_dsn:
        return
    import sentry_sdk

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_environment or None,
        server_name=None,
        traces_sample_rate=0.0,
    )
    sentry_sdk.set_tag("role", role)


def report(exc: BaseException | None = None, message: str = "", **context: Any) -> None:
    """Send an error to Sentry when it is configured (a no-op otherwise)."""
    import sentry_sdk

    if not sentry_sdk.is_initialized():
        return
    with sentry_sdk.new_scope() as scope:
        for key, value in context.items():
            scope.set_extra(key, value)
        if exc is not None:
            sentry_sdk.capture_exception(exc)
        else:
            sentry_sdk.capture_message(message, level="error")
