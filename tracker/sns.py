"""Amazon SNS HTTP(S) messages: parsing and signature verification.

A valid signature only proves that *some* SNS topic sent the message, so a message is accepted
only when all of these hold, cheapest first (nothing is fetched for a message that fails early):

1. its TopicArn is one of SNS_TOPIC_ARNS. Unset, every message is refused: a public webhook
   that trusts any topic lets anyone publish signed fake bounces from their own AWS account.
   `*` is the explicit opt-out;
2. its Timestamp is at most SNS_MAX_AGE old, and not more than MAX_CLOCK_SKEW ahead;
3. its SignatureVersion is one of SNS_SIGNATURE_VERSIONS (1 is SHA1withRSA, 2 SHA256withRSA,
   both PKCS#1 v1.5);
4. its SigningCertURL fully matches SNS_CERT_URL_PATTERN (default: https on an SNS regional
   host, `sns.<region>.amazonaws.com[.cn]`, path `/SimpleNotificationService-<hex>.pem`). Plain
   http only passes when the configured pattern itself matches it, which is how tests and local
   sandboxes opt in;
5. the certificate is current, has an RSA key usable for signatures and is issued to SNS
   (subject CN or DNS name `sns.amazonaws.com`, as AWS's own certificates are);
6. its Signature verifies with that certificate's key over the string-to-sign of its type.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sesflow.common.logs import get_logger
from sesflow.common.settings import ANY_TOPIC, Settings

log = get_logger(__name__)

VALIDATION_MESSAGE_PREFIX = "Successfully validated SNS topic"


# --- messages -----------------------------------------------------------------------------------


class _Signed(msgspec.Struct, frozen=True, kw_only=True, tag_field="Type"):
    # `Message` is a JSON string in real SNS deliveries; the Go service documents it as an object.
    message: str | dict[str, Any] = msgspec.field(name="Message", default="")
    message_id: str = msgspec.field(name="MessageId", default="")
    topic_arn: str = msgspec.field(name="TopicArn", default="")
    timestamp: str = msgspec.field(name="Timestamp", default="")
    signature_version: str = msgspec.field(name="SignatureVersion", default="")
    signature: str = msgspec.field(name="Signature", default="")
    signing_cert_url: str = msgspec.field(name="SigningCertURL", default="")


class Notification(_Signed, frozen=True, kw_only=True, tag="Notification"):
    subject: str | None = msgspec.field(name="Subject", default=None)
    unsubscribe_url: str = msgspec.field(name="UnsubscribeURL", default="")


class SubscriptionConfirmation(_Signed, frozen=True, kw_only=True, tag="SubscriptionConfirmation"):
    subscribe_url: str = msgspec.field(name="SubscribeURL", default="")
    token: str = msgspec.field(name="Token", default="")


class UnsubscribeConfirmation(_Signed, frozen=True, kw_only=True, tag="UnsubscribeConfirmation"):
    subscribe_url: str = msgspec.field(name="SubscribeURL", default="")
    token: str = msgspec.field(name="Token", default="")


SnsMessage = Notification | SubscriptionConfirmation | UnsubscribeConfirmation

_decoder: msgspec.json.Decoder[SnsMessage] = msgspec.json.Decoder(SnsMessage)
_compact = msgspec.json.Encoder()


def decode(body: bytes) -> SnsMessage:
    """Raises msgspec.DecodeError / ValidationError for a body that is not an SNS message."""
    return _decoder.decode(body)


def message_text(message: str | dict[str, Any]) -> str:
    """`Message` as the signer saw it. An object (the Go service's shape, never sent by SNS itself)
    is signed over its compact JSON, keys in the order given."""
    return message if isinstance(message, str) else _compact.encode(message).decode()


def message_type(msg: SnsMessage) -> str:
    tag = type(msg).__struct_config__.tag
    return str(tag)


def string_to_sign(msg: SnsMessage) -> bytes:
    """The exact bytes SNS signs: `Name\\nvalue\\n` pairs in a fixed order per message type."""
    pairs: list[tuple[str, str]] = [("Message", message_text(msg.message))]
    pairs.append(("MessageId", msg.message_id))
    if isinstance(msg, Notification):
        if msg.subject is not None:
            pairs.append(("Subject", msg.subject))
        pairs += [("Timestamp", msg.timestamp), ("TopicArn", msg.topic_arn)]
    else:
        pairs += [
            ("SubscribeURL", msg.subscribe_url),
            ("Timestamp", msg.timestamp),
            ("Token", msg.token),
            ("TopicArn", msg.topic_arn),
        ]
    pairs.append(("Type", message_type(msg)))
    return "".join(f"{name}\n{value}\n" for name, value in pairs).encode()


MAX_CLOCK_SKEW = 300.0  # seconds a Timestamp may be ahead of this host's clock

HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}


def parse_timestamp(text: str) -> float:
    """SNS's ISO 8601 Timestamp as epoch seconds; raises ValueError."""
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


# --- errors -------------------------------------------------------------------------------------


class SnsRejected(Exception):
    """The message is not provably from an accepted topic: answer 403. `reason` is a metric
    label: unsigned, signature_version, bad_signature, cert_url, cert, topic, no_topics, stale."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class CertUnavailable(Exception):
    """The signing certificate could not be fetched right now (network, timeout, AWS 5xx): the
    message may be genuine, so the webhook answers 503 and SNS retries later."""


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertLimits:
    """How many signing certificates a `CertCache` keeps and fetches, for how long, how big."""

    max_entries: int = 64
    ttl: float = 6 * 3600.0
    timeout: float = 5.0  # one fetch, in seconds
    max_bytes: int = 64 * 1024
    max_concurrent_fetches: int = 8
    max_pending_fetches: int = 64


class CertCache:
    """Signing keys by certificate URL: bounded (LRU), with a TTL, one fetch per URL at a time,
    and a bounded number of URLs waiting to be fetched.

    Concurrent requests for a URL that is not cached await one shared task, shielded so that a
    cancelled request does not cancel the fetch the others wait for. Failures are not cached.
    """

    def __init__(self, session: aiohttp.ClientSession, limits: CertLimits | None = None) -> None:
        limits = limits or CertLimits()
        self._session = session
        self._max_entries = limits.max_entries
        self._ttl = limits.ttl
        self._timeout = aiohttp.ClientTimeout(total=limits.timeout)
        self._max_bytes = limits.max_bytes
        self._fetching = asyncio.Semaphore(limits.max_concurrent_fetches)
        self._max_pending = limits.max_pending_fetches
        self._entries: OrderedDict[str, tuple[float, rsa.RSAPublicKey]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[rsa.RSAPublicKey]] = {}
        self.fetches = 0  # certificates actually downloaded (for tests and logs)

    async def public_key(self, url: str) -> rsa.RSAPublicKey:
        cached = self._entries.get(url)
        if cached is not None and cached[0] > time.monotonic():
            self._entries.move_to_end(url)
            return cached[1]
        task = self._inflight.get(url)
        if task is None:
            if len(self._inflight) >= self._max_pending:
                # Each message may name a certificate URL of its own: a flood of them must not
                # queue without bound. SNS retries a 503; its certificates are cached by then.
                raise CertUnavailable("too many certificate fetches under way")
            task = asyncio.create_task(self._fetch(url))
            self._inflight[url] = task
            task.add_done_callback(lambda done: self._fetch_done(url, done))
        return await asyncio.shield(task)

    def _fetch_done(self, url: str, task: asyncio.Task[rsa.RSAPublicKey]) -> None:
        self._inflight.pop(url, None)
        if not task.cancelled():
            task.exception()  # retrieved here too, so an unawaited failure is not reported twice

    async def _fetch(self, url: str) -> rsa.RSAPublicKey:
        async with self._fetching:
            self.fetches += 1
            pem = await self._download(url)
        key, expires = self._load(url, pem)
        # Never keep a key past its certificate's expiry.
        deadline = time.monotonic() + max(0.0, min(self._ttl, expires - time.time()))
        self._entries[url] = (deadline, key)
        self._entries.move_to_end(url)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return key

    async def _download(self, url: str) -> bytes:
        try:
            async with self._session.get(url, timeout=self._timeout, allow_redirects=False) as resp:
                if resp.status >= 500:
                    raise CertUnavailable(f"certificate URL answered {resp.status}")
                if resp.status != 200:
                    raise SnsRejected("cert", f"certificate URL answered {resp.status}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(16 * 1024):
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise SnsRejected("cert", "certificate too large")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CertUnavailable(f"certificate fetch failed: {exc!r}") from exc
        return bytes(body)

    @staticmethod
    def _load(url: str, pem: bytes) -> tuple[rsa.RSAPublicKey, float]:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise SnsRejected("cert", "not a PEM certificate") from exc
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise SnsRejected("cert", "certificate expired or not yet valid")
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SnsRejected("cert", "certificate key is not RSA")
        check_issued_to_sns(cert)
        log.info("sns certificate loaded", url=url, subject=cert.subject.rfc4514_string())
        return key, cert.not_valid_after_utc.timestamp()


# The name SNS's signing certificates are issued to (CN and DNS name), in every partition.
SNS_CERT_NAME = "sns.amazonaws.com"


def certificate_names(cert: x509.Certificate) -> set[str]:
    """The subject's common names and the DNS names of the certificate, lowercased."""
    names = {
        str(attr.value).lower()
        for attr in cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    }
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names
    return names | {name.lower() for name in alt.get_values_for_type(x509.DNSName)}


def check_issued_to_sns(cert: x509.Certificate) -> None:
    """The host check decides where a certificate may come from; this one refuses a certificate
    that is not SNS's even there (a misconfigured pattern, a hijacked path)."""
    if SNS_CERT_NAME not in certificate_names(cert):
        subject = cert.subject.rfc4514_string()[:200]
        raise SnsRejected("cert", f"certificate is not issued to {SNS_CERT_NAME}: {subject}")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.digital_signature:
        raise SnsRejected("cert", "certificate key is not for digital signatures")


# --- verification -------------------------------------------------------------------------------


def origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class SnsVerifier:
    def __init__(self, settings: Settings, certs: CertCache) -> None:
        self._pattern = re.compile(settings.sns_cert_url_pattern)
        self._topics = frozenset(settings.sns_topic_arns)
        self._any_topic = ANY_TOPIC in self._topics
        self._hashes = {v: HASHES[v] for v in settings.sns_signature_versions}
        self._max_age = settings.sns_max_age
        self._certs = certs

    def check_topic(self, topic_arn: str) -> None:
        if self._any_topic:
            return
        if not self._topics:
            raise SnsRejected("no_topics", "SNS_TOPIC_ARNS is not set: no SNS topic is accepted")
        if topic_arn not in self._topics:
            raise SnsRejected("topic", f"topic not accepted: {topic_arn[:200]}")

    def check_cert_url(self, url: str) -> None:
        parts = urlsplit(url)
        if (
            parts.scheme not in {"https", "http"}
            or not parts.hostname
            or parts.username is not None
            or parts.password is not None
            or not self._pattern.fullmatch(url)
        ):
            raise SnsRejected("cert_url", f"certificate URL not accepted: {url[:200]}")

    def check_subscribe_url(self, msg: SubscriptionConfirmation) -> None:
        """SubscribeURL must be on the (already checked) origin of the signing certificate."""
        parts = urlsplit(msg.subscribe_url)
        if (
            origin(msg.subscribe_url) != origin(msg.signing_cert_url)
            or parts.username is not None
            or parts.password is not None
        ):
            raise SnsRejected("subscribe_url", "SubscribeURL is not on the SNS host")

    async def verify(self, msg: SnsMessage) -> None:
        """Returns when the message is authentic and welcome; raises SnsRejected or
        CertUnavailable otherwise."""
        if not msg.signature or not msg.signing_cert_url:
            raise SnsRejected("unsigned", "Signature and SigningCertURL are required")
        self.check_topic(msg.topic_arn)
        try:
            sent = parse_timestamp(msg.timestamp)
        except ValueError as exc:
            raise SnsRejected("stale", "Timestamp is not an ISO 8601 time") from exc
        age = time.time() - sent
        if age > self._max_age:
            raise SnsRejected("stale", f"Timestamp {msg.timestamp[:40]} is too old")
        if age < -MAX_CLOCK_SKEW:
            # SNS stamps its own messages: one from the future would stay "fresh" past the
            # lifetime of its dedupe mark, and so be replayable.
            raise SnsRejected("stale", f"Timestamp {msg.timestamp[:40]} is in the future")
        algorithm = self._hashes.get(msg.signature_version)
        if algorithm is None:
            raise SnsRejected(
                "signature_version",
                f"SignatureVersion {msg.signature_version[:20]!r} is not accepted "
                f"(SNS_SIGNATURE_VERSIONS={','.join(self._hashes)})",
            )
        self.check_cert_url(msg.signing_cert_url)
        try:
            signature = base64.b64decode(msg.signature, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SnsRejected("bad_signature", "Signature is not base64") from exc
        key = await self._certs.public_key(msg.signing_cert_url)
        try:
            key.verify(signature, string_to_sign(msg), padding.PKCS1v15(), algorithm())
        except InvalidSignature as exc:
            raise SnsRejected("bad_signature", "signature does not verify") from exc


async def confirm_subscription(
    session: aiohttp.ClientSession, url: str, seconds: float = 10.0
) -> bool:
    """GET SubscribeURL (only call this for a verified message). True when SNS said 200."""
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=seconds), allow_redirects=False
        ) as resp:
            await resp.read()
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("sns subscription confirmation failed", error=repr(exc))
        return False
