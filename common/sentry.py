"""Sentry is initialised only when SENTRY_DSN is set, and nothing secret or personal reaches it.

An event is built from exceptions, their messages and whatever an integration attaches (request
data, breadcrumbs). Local variables are off (a frame holding the Settings, a job or a message
would carry credentials, addresses and bodies), request bodies are never sent, and `scrub`
rewrites every string of an event and of each breadcrumb before it leaves: the values of the
secret settings become '[redacted]', URL passwords '***' and email addresses '[email]'.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import urlsplit

from sesflow.common.settings import SECRET_FIELDS, Settings, redact_url

EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
REDACTED = "[redacted]"
Level = Literal["fatal", "critical", "error", "warning", "info", "debug"]
# Shorter values would redact common words, and no secret setting may be that short anyway.
MIN_SECRET_CHARS = 6


def secret_values(settings: Settings) -> list[str]:
    """The strings that must never leave: secret settings and the passwords in URL settings."""
    values = [getattr(settings, name) for name in SECRET_FIELDS]
    for url in (settings.redis_url, settings.archive_url):
        try:
            values.append(urlsplit(url).password or "")
        except ValueError:
            continue
    return sorted({v for v in values if len(v) >= MIN_SECRET_CHARS}, key=len, reverse=True)


class Scrubber:
    """Rewrites an event (nested dicts, lists, strings) without secrets and addresses."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted(set(secrets), key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return EMAIL.sub("[email]", redact_url(value))

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self(key): self(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self(item) for item in value]
        if isinstance(value, bytes | bytearray):
            return self.text(bytes(value).decode("utf-8", "replace"))
        return value


def without_request_details(event: Any) -> Any:
    """The event without the query string, body and cookies of the request it happened in: a
    tracking token (`?t=...`) carries the recipient's address in base64, which no text scrub
    sees."""
    request = event.get("request") if isinstance(event, dict) else None
    if isinstance(request, dict):
        for field in ("query_string", "data", "cookies"):
            request.pop(field, None)
        if isinstance(request.get("url"), str):
            request["url"] = request["url"].split("?", 1)[0]
    return event


def sentry_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of `sentry_sdk.init` (the DSN and environment aside)."""
    scrub = Scrubber(secret_values(settings))

    def before_send(event: Any, _hint: Any) -> Any:
        return scrub(without_request_details(event))

    def before_breadcrumb(crumb: Any, _hint: Any) -> Any:
        return scrub(crumb)

    return {
        "include_local_variables": False,
        # send_default_pii is left unset: off by default (and deprecated when given).
        "max_request_body_size": "never",
        "before_send": before_send,
        "before_send_transaction": before_send,
        "before_breadcrumb": before_breadcrumb,
    }


def init_sentry(settings: Settings, role: str, **extra: Any) -> None:
    if not settings.sentry_dsn:
        return
    import sentry_sdk

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_environment or None,
        server_name=None,
        traces_sample_rate=0.0,
        **sentry_options(settings),
        **extra,
    )
    sentry_sdk.set_tag("role", role)


def report(
    exc: BaseException | None = None, message: str = "", level: Level = "error", **context: Any
) -> None:
    """Send an error (or, with `message`, a message at `level`) to Sentry when it is configured
    (a no-op otherwise)."""
    import sentry_sdk

    if not sentry_sdk.is_initialized():
        return
    with sentry_sdk.new_scope() as scope:
        for key, value in context.items():
            scope.set_extra(key, value)
        if exc is not None:
            sentry_sdk.capture_exception(exc)
        else:
            sentry_sdk.capture_message(message, level=level)
