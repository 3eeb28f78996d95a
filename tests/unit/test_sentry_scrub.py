"""A real Sentry event, captured by a transport of our own: no secret and no address in it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from sesflow.common import sentry
from sesflow.common.sentry import Scrubber, init_sentry
from sesflow.common.settings import Settings, settings_from_mapping

REDIS_PASSWORD = "redis-pass-0123456789"
SECRETS = {
    "API_KEY": "api-key-0123456789abcdef",
    "JWT_SECRET": "jwt-secret-0123456789abcdef",
    "TRACKING_SECRET": "tracking-secret-0123456789",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-0123456789abcdef",
}
RECIPIENT = "jane.doe+news@example.org"


class Captured(Transport):
    """Keeps every envelope in memory instead of sending it."""

    envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        Captured.envelopes.append(envelope)


@pytest.fixture
def settings_with_sentry() -> Iterator[Settings]:
    settings = settings_from_mapping(
        {
            **SECRETS,
            "REDIS_URL": f"redis://:{REDIS_PASSWORD}@redis.internal:6379/0",
            "SENTRY_DSN": "https://public0123456789@o1.ingest.sentry.example/42",
        }
    )
    Captured.envelopes = []
    init_sentry(settings, "sender", transport=Captured)
    yield settings
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


def fail_with_secrets_at_hand(settings: Settings) -> None:
    redis_url = settings.redis_url  # noqa: F841 (a local Sentry would otherwise record)
    email = RECIPIENT  # noqa: F841
    body = f"<p>Hello {RECIPIENT}</p>"  # noqa: F841
    raise RuntimeError(
        f"cannot reach {settings.redis_url} for {RECIPIENT} with key {settings.api_key}"
    )


def sent_bytes() -> bytes:
    sentry_sdk.flush(timeout=5)
    assert Captured.envelopes, "no event reached the transport"
    return b"".join(envelope.serialize() for envelope in Captured.envelopes)


def assert_clean(data: bytes) -> None:
    # (The DSN's public key is in the envelope header: it is how Sentry itself authenticates.)
    for secret in [*SECRETS.values(), REDIS_PASSWORD, RECIPIENT]:
        assert secret.encode() not in data, secret
    assert b"jane.doe" not in data


def test_an_exception_event_holds_no_secret_and_no_address(
    settings_with_sentry: Settings,
) -> None:
    sentry_sdk.add_breadcrumb(message=f"sending to {RECIPIENT}", data={"to": RECIPIENT})
    try:
        fail_with_secrets_at_hand(settings_with_sentry)
    except RuntimeError as exc:
        sentry.report(exc, entry="1-0", recipient=RECIPIENT, settings=settings_with_sentry)
    data = sent_bytes()
    assert_clean(data)
    # The event is still useful: the error, where it happened, the redacted context.
    assert b"RuntimeError" in data and b"fail_with_secrets_at_hand" in data
    assert b"redis://:***@redis.internal:6379/0" in data
    assert b"[email]" in data and b"[redacted]" in data


def test_a_message_event_is_scrubbed_too(settings_with_sentry: Settings) -> None:
    sentry.report(message=f"MessageRejected for {RECIPIENT}: key {SECRETS['API_KEY']}")
    assert_clean(sent_bytes())


def test_local_variables_and_request_bodies_are_off(settings_with_sentry: Settings) -> None:
    options: dict[str, Any] = sentry_sdk.get_client().options
    assert options["include_local_variables"] is False
    assert not sentry_sdk.get_client().should_send_default_pii()
    assert options["max_request_body_size"] == "never"


def test_scrubber_walks_nested_values() -> None:
    scrub = Scrubber(["s3cr3t-value"])
    event = {
        "a": ["x s3cr3t-value y", ("amqp://u:pw@h/", b"to bob@example.com")],
        "bob@example.com": {"n": 1, "none": None},
    }
    assert scrub(event) == {
        "a": ["x [redacted] y", ["amqp://u:***@h/", "to [email]"]],
        "[email]": {"n": 1, "none": None},
    }


def test_a_request_keeps_its_path_but_not_its_tracking_token() -> None:
    from sesflow.common.tracking import Token, sign

    token = sign(b"tracking-secret-0123456789", Token(k="u", r="1-0_0", e=RECIPIENT))
    event = {
        "request": {
            "url": f"https://t.example/v1/events/unsubscribe?t={token}",
            "query_string": f"t={token}",
            "method": "POST",
            "data": {"email": RECIPIENT},
            "cookies": {"s": "1"},
        }
    }
    options = sentry.sentry_options(settings_from_mapping({}))
    request = options["before_send"](event, {})["request"]
    assert request == {"url": "https://t.example/v1/events/unsubscribe", "method": "POST"}
