"""Sign SNS messages the way Amazon SNS does, for tests: a self-signed RSA certificate (made with
`cryptography`) whose PEM is served by a small aiohttp server on loopback.

    signer = SnsSigner()
    async with signer.serve():                      # or `with signer.serve_in_thread():`
        settings = make_settings(SNS_CERT_URL_PATTERN=signer.pattern,
                                 SNS_TOPIC_ARNS=signer.topic_arn)
        body = signer.notification({"eventType": "Delivery", ...}, version=2)
        await client.post("/v1/events/results", data=json.dumps(body))

The string-to-sign is built here independently of the tracker's own code (from the rules in the
design notes), so tests check the tracker against the protocol rather than against itself. The
same server answers SubscribeURL requests (`/confirm`) and counts what it served.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:sesflow-feedback"

NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
SUBSCRIPTION_KEYS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)


def make_key_and_cert(
    common_name: str = "sns.amazonaws.com",
    key_usage: x509.KeyUsage | None = None,
    key: rsa.RSAPrivateKey | None = None,
) -> tuple[rsa.RSAPrivateKey, bytes]:
    """A 2048-bit RSA key and its self-signed certificate (PEM), valid from an hour ago, issued
    to `common_name` (SNS's own name by default: the tracker checks it)."""
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    cert = builder.sign(key, hashes.SHA256())
    return key, cert.public_bytes(serialization.Encoding.PEM)


def sns_timestamp(when: dt.datetime | None = None) -> str:
    """SNS's Timestamp format, e.g. 2024-11-24T15:20:34.567Z."""
    when = (when or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def message_text(message: Any) -> str:
    """`Message` as signed: a string as is; an object (the Go service's shape) as compact JSON."""
    if isinstance(message, str):
        return message
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def string_to_sign(body: dict[str, Any]) -> bytes:
    keys = NOTIFICATION_KEYS if body["Type"] == "Notification" else SUBSCRIPTION_KEYS
    text = ""
    for name in keys:
        if name not in body or body[name] is None:
            continue  # only Subject is optional
        value = message_text(body[name]) if name == "Message" else str(body[name])
        text += f"{name}\n{value}\n"
    return text.encode()


def sign(body: dict[str, Any], key: rsa.RSAPrivateKey, version: int = 2) -> dict[str, Any]:
    """A copy of `body` with SignatureVersion and Signature set (v1 SHA1, v2 SHA256)."""
    algorithm = hashes.SHA1() if version == 1 else hashes.SHA256()
    signed = dict(body, SignatureVersion=str(version))
    signature = key.sign(string_to_sign(signed), padding.PKCS1v15(), algorithm)
    signed["Signature"] = base64.b64encode(signature).decode()
    return signed


class SnsSigner:
    """One signing identity plus the loopback server that publishes its certificate."""

    def __init__(
        self,
        topic_arn: str = TOPIC_ARN,
        identity: tuple[rsa.RSAPrivateKey, bytes] | None = None,
    ) -> None:
        """`identity` (key, PEM) lets a test session reuse one key: generating one takes ~0.1 s."""
        self.key, self.pem = identity or make_key_and_cert()
        self.topic_arn = topic_arn
        self.base_url = ""
        self.cert_fetches = 0
        self.confirmations: list[str] = []  # query strings of SubscribeURL requests served

    # --- the server -------------------------------------------------------------------------

    @property
    def cert_url(self) -> str:
        return f"{self.base_url}/SimpleNotificationService-test.pem"

    @property
    def pattern(self) -> str:
        """A SNS_CERT_URL_PATTERN that accepts this server's certificate URLs (plain http)."""
        host = self.base_url.removeprefix("http://").replace(".", r"\.")
        return rf"http://{host}/[^?#]+\.pem"

    def _app(self) -> web.Application:
        async def cert(_: web.Request) -> web.Response:
            self.cert_fetches += 1
            return web.Response(body=self.pem, content_type="application/x-x509-ca-cert")

        async def confirm(request: web.Request) -> web.Response:
            self.confirmations.append(request.query_string)
            return web.Response(
                text="<ConfirmSubscriptionResponse/>", content_type="application/xml"
            )

        app = web.Application()
        app.router.add_get("/SimpleNotificationService-test.pem", cert)
        app.router.add_get("/confirm", confirm)
        return app

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[SnsSigner]:
        runner = web.AppRunner(self._app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            await runner.cleanup()

    @contextlib.contextmanager
    def serve_in_thread(self) -> Iterator[SnsSigner]:
        """The same server on its own event loop in a thread, for synchronous tests."""
        ready = threading.Event()
        stop: asyncio.Event | None = None
        loop = asyncio.new_event_loop()

        async def main() -> None:
            nonlocal stop
            stop = asyncio.Event()
            async with self.serve():
                ready.set()
                await stop.wait()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        ready.wait(10)
        try:
            yield self
        finally:
            if stop is not None:
                loop.call_soon_threadsafe(stop.set)
            thread.join(10)
            loop.close()

    # --- messages ---------------------------------------------------------------------------

    def notification(  # noqa: PLR0913 (the fields of an SNS Notification)
        self,
        message: Any,
        *,
        version: int = 2,
        subject: str | None = None,
        message_id: str | None = None,
        timestamp: str | None = None,
        topic_arn: str | None = None,
        cert_url: str | None = None,
    ) -> dict[str, Any]:
        """A signed Notification. `message` may be a dict: it is sent as a JSON string, as SNS
        does (pass `json.dumps`-ed text yourself to control the exact bytes)."""
        body: dict[str, Any] = {
            "Type": "Notification",
            "MessageId": message_id or str(uuid.uuid4()),
            "TopicArn": topic_arn or self.topic_arn,
            "Message": message if isinstance(message, str) else json.dumps(message),
            "Timestamp": timestamp or sns_timestamp(),
            "SigningCertURL": cert_url or self.cert_url,
            "UnsubscribeURL": f"{self.base_url}/unsubscribe?SubscriptionArn={self.topic_arn}:1",
        }
        if subject is not None:
            body["Subject"] = subject
        return sign(body, self.key, version)

    def subscription(
        self,
        kind: str = "SubscriptionConfirmation",
        *,
        version: int = 2,
        topic_arn: str | None = None,
        subscribe_url: str | None = None,
        timestamp: str | None = None,
    ) -> dict[str, Any]:
        """A signed SubscriptionConfirmation (or UnsubscribeConfirmation)."""
        topic = topic_arn or self.topic_arn
        token = uuid.uuid4().hex * 2
        body = {
            "Type": kind,
            "MessageId": str(uuid.uuid4()),
            "Token": token,
            "TopicArn": topic,
            "Message": f"You have chosen to subscribe to the topic {topic}.\n"
            "To confirm the subscription, visit the SubscribeURL included in this message.",
            "SubscribeURL": subscribe_url
            or f"{self.base_url}/confirm?Action=ConfirmSubscription&TopicArn={topic}&Token={token}",
            "Timestamp": timestamp or sns_timestamp(),
            "SigningCertURL": self.cert_url,
        }
        return sign(body, self.key, version)
