"""SNS verification pieces on their own: string-to-sign, certificate URL rules, the certificate
cache (one fetch per URL, TTL, bound, failures)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from sesflow.common.errors import ConfigError
from sesflow.common.settings import settings_from_mapping
from sesflow.tracker import sns

from support.snssign import SnsSigner, make_key_and_cert, string_to_sign


def verifier(**env: str) -> sns.SnsVerifier:
    return sns.SnsVerifier(settings_from_mapping(env), certs=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("subject", [None, "", "Amazon SES Email Event Notification"])
def test_notification_string_to_sign_matches_the_protocol(
    signing_identity: tuple[rsa.RSAPrivateKey, bytes], subject: str | None
) -> None:
    body = SnsSigner(identity=signing_identity).notification({"eventType": "Send"}, subject=subject)
    assert sns.string_to_sign(sns.decode(json.dumps(body).encode())) == string_to_sign(body)
    assert (b"Subject\n" in string_to_sign(body)) == (subject is not None)


@pytest.mark.parametrize("kind", ["SubscriptionConfirmation", "UnsubscribeConfirmation"])
def test_subscription_string_to_sign_matches_the_protocol(
    signing_identity: tuple[rsa.RSAPrivateKey, bytes], kind: str
) -> None:
    body = SnsSigner(identity=signing_identity).subscription(kind)
    expected = string_to_sign(body)
    assert sns.string_to_sign(sns.decode(json.dumps(body).encode())) == expected
    order = ["MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    positions = [expected.index(f"\n{name}\n".encode()) for name in order]
    assert expected.startswith(b"Message\n")
    assert positions == sorted(positions)


@pytest.mark.parametrize(
    "url",
    [
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-6aad65c2f9911b05cd53efda11f913f9.pem",
        "https://sns.eu-central-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.ap-southeast-2.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
        "https://sns.cn-northwest-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
    ],
)
def test_default_pattern_accepts_aws_certificate_urls(url: str) -> None:
    verifier().check_cert_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com@evil.example/x.pem",
        "https://user@sns.us-east-1.amazonaws.com/x.pem",
        "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com/x.pem?evil=1",
        "https://sns.us-east-1.amazonaws.com/x.pem#frag",
        "https://sns.us-east-1.amazonaws.com/x.txt",
        "https://s3.amazonaws.com/x.pem",
        "ftp://sns.us-east-1.amazonaws.com/x.pem",
        "",
        # S3 virtual-hosted addresses of a bucket named `sns`: anyone can own one.
        "https://sns.s3.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.s3-external-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.s3-ap-southeast-2.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.s3.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.s3-website-us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        # Only region-shaped labels, each partition on its own domain, SNS's certificate path.
        "https://sns.foo.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
        "https://sns.cn-north-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com/bucket/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-xyz.pem",
        "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-abc.pem",
    ],
)
def test_default_pattern_refuses_anything_else(url: str) -> None:
    with pytest.raises(sns.SnsRejected) as info:
        verifier().check_cert_url(url)
    assert info.value.reason == "cert_url"


def test_http_only_when_the_configured_pattern_matches_it() -> None:
    https_only = verifier(SNS_CERT_URL_PATTERN=r"https://127\.0\.0\.1:\d+/[^?#]+\.pem")
    with pytest.raises(sns.SnsRejected):
        https_only.check_cert_url("http://127.0.0.1:8080/cert.pem")
    https_only.check_cert_url("https://127.0.0.1:8080/cert.pem")
    local = verifier(SNS_CERT_URL_PATTERN=r"http://127\.0\.0\.1:\d+/[^?#]+\.pem")
    local.check_cert_url("http://127.0.0.1:8080/cert.pem")
    with pytest.raises(sns.SnsRejected):  # the whole URL must match, not a prefix
        local.check_cert_url("http://127.0.0.1:8080/cert.pem.evil")


def test_timestamps_parse_with_and_without_fraction() -> None:
    assert sns.parse_timestamp("2024-11-24T15:20:34.567Z") == pytest.approx(1732461634.567)
    assert sns.parse_timestamp("2024-11-24T15:20:34Z") == 1732461634.0
    with pytest.raises(ValueError):
        sns.parse_timestamp("yesterday")


# --- certificate cache ----------------------------------------------------------------------


class CertServer:
    def __init__(self, pem: bytes) -> None:
        self.pem = pem
        self.other: dict[str, bytes] = {}  # name -> another certificate served under it
        self.hits: dict[str, int] = {}
        self.delay = 0.0
        self.base = ""

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        await asyncio.sleep(self.delay)
        if name == "missing.pem":
            return web.Response(status=404)
        if name == "broken.pem":
            return web.Response(status=503)
        if name == "junk.pem":
            return web.Response(body=b"-----BEGIN CERTIFICATE-----\nnope\n")
        if name == "huge.pem":
            return web.Response(body=b"x" * 200_000)
        return web.Response(body=self.other.get(name, self.pem))

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


@pytest.fixture
async def cert_server(
    signing_identity: tuple[rsa.RSAPrivateKey, bytes],
) -> AsyncIterator[CertServer]:
    server = CertServer(signing_identity[1])
    app = web.Application()
    app.router.add_get("/{name}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


@contextlib.asynccontextmanager
async def cache(**options: Any) -> AsyncIterator[sns.CertCache]:
    async with aiohttp.ClientSession() as session:
        yield sns.CertCache(session, sns.CertLimits(**options))


async def test_concurrent_requests_share_one_fetch(cert_server: CertServer) -> None:
    cert_server.delay = 0.2
    async with cache() as certs:
        keys = await asyncio.gather(
            *(certs.public_key(cert_server.url("a.pem")) for _ in range(20))
        )
    assert len({id(k) for k in keys}) == 1
    assert cert_server.hits == {"a.pem": 1}
    assert certs.fetches == 1


async def test_a_cancelled_waiter_does_not_cancel_the_shared_fetch(cert_server: CertServer) -> None:
    cert_server.delay = 0.3
    async with cache() as certs:
        first = asyncio.create_task(certs.public_key(cert_server.url("a.pem")))
        second = asyncio.create_task(certs.public_key(cert_server.url("a.pem")))
        await asyncio.sleep(0.05)
        first.cancel()
        assert isinstance(await second, rsa.RSAPublicKey)
        with pytest.raises(asyncio.CancelledError):
            await first
    assert cert_server.hits == {"a.pem": 1}


async def test_cache_has_a_ttl_and_a_bound(cert_server: CertServer) -> None:
    async with cache(max_entries=2, ttl=0.2) as certs:
        for name in ("a.pem", "b.pem", "a.pem", "b.pem"):
            await certs.public_key(cert_server.url(name))
        assert cert_server.hits == {"a.pem": 1, "b.pem": 1}
        await certs.public_key(cert_server.url("c.pem"))  # evicts a.pem, least recently used
        await certs.public_key(cert_server.url("b.pem"))
        assert cert_server.hits == {"a.pem": 1, "b.pem": 1, "c.pem": 1}
        await certs.public_key(cert_server.url("a.pem"))
        assert cert_server.hits["a.pem"] == 2
        await asyncio.sleep(0.25)
        await certs.public_key(cert_server.url("b.pem"))
        assert cert_server.hits["b.pem"] == 2


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("missing.pem", sns.SnsRejected),
        ("junk.pem", sns.SnsRejected),
        ("huge.pem", sns.SnsRejected),
        ("broken.pem", sns.CertUnavailable),
    ],
)
async def test_bad_certificates_are_refused_and_not_cached(
    cert_server: CertServer, name: str, error: type[Exception]
) -> None:
    async with cache() as certs:
        for _ in range(2):
            with pytest.raises(error):
                await certs.public_key(cert_server.url(name))
    assert cert_server.hits[name] == 2


async def test_certificate_fetches_waiting_are_bounded(cert_server: CertServer) -> None:
    cert_server.delay = 0.3
    async with cache(max_pending_fetches=2) as certs:
        first = asyncio.create_task(certs.public_key(cert_server.url("a.pem")))
        second = asyncio.create_task(certs.public_key(cert_server.url("b.pem")))
        same = asyncio.create_task(certs.public_key(cert_server.url("a.pem")))  # joins a fetch
        await asyncio.sleep(0.05)
        with pytest.raises(sns.CertUnavailable, match="too many"):
            await certs.public_key(cert_server.url("c.pem"))
        keys = await asyncio.gather(first, second, same)
        assert all(isinstance(k, rsa.RSAPublicKey) for k in keys)
        await certs.public_key(cert_server.url("c.pem"))  # room again
    assert cert_server.hits == {"a.pem": 1, "b.pem": 1, "c.pem": 1}


NO_SIGNING = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


async def test_certificate_not_issued_to_sns_is_refused(
    cert_server: CertServer, signing_identity: tuple[rsa.RSAPrivateKey, bytes]
) -> None:
    key = signing_identity[0]  # the same key: only the certificate around it differs
    cert_server.other = {
        "elsewhere.pem": make_key_and_cert("sns.example.com", key=key)[1],
        "lookalike.pem": make_key_and_cert("sns.amazonaws.com.evil.example", key=key)[1],
        "no-signing.pem": make_key_and_cert(key_usage=NO_SIGNING, key=key)[1],
    }
    async with cache() as certs:
        for name in cert_server.other:
            with pytest.raises(sns.SnsRejected) as info:
                await certs.public_key(cert_server.url(name))
            assert info.value.reason == "cert", name
        assert isinstance(await certs.public_key(cert_server.url("sns.pem")), rsa.RSAPublicKey)


async def test_unreachable_or_slow_certificate_is_unavailable(cert_server: CertServer) -> None:
    cert_server.delay = 0.5
    async with cache(timeout=0.1) as certs:
        with pytest.raises(sns.CertUnavailable):
            await certs.public_key(cert_server.url("a.pem"))
        with pytest.raises(sns.CertUnavailable):
            await certs.public_key("http://127.0.0.1:1/a.pem")


def test_signer_can_serve_from_a_thread_for_synchronous_tests(
    signing_identity: tuple[rsa.RSAPrivateKey, bytes],
) -> None:
    import urllib.request

    signer = SnsSigner(identity=signing_identity)
    with signer.serve_in_thread():
        with urllib.request.urlopen(signer.cert_url, timeout=5) as resp:
            assert resp.read() == signer.pem
        assert signer.cert_fetches == 1
        verifier(SNS_CERT_URL_PATTERN=signer.pattern).check_cert_url(signer.cert_url)


# --- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SNS_TOPIC_ARNS": "CHANGE_ME"}, "not an SNS topic ARN"),
        ({"SNS_TOPIC_ARNS": "arn:aws:sqs:us-east-1:123456789012:queue"}, "not an SNS topic ARN"),
        ({"SNS_TOPIC_ARNS": "*,arn:aws:sns:us-east-1:123456789012:t"}, "either `*`"),
        ({"SNS_SIGNATURE_VERSIONS": "3"}, "SNS_SIGNATURE_VERSIONS"),
        ({"SNS_SIGNATURE_VERSIONS": "1,sha256"}, "SNS_SIGNATURE_VERSIONS"),
        ({"SNS_CERT_URL_PATTERN": "https://(unclosed"}, "not a regular expression"),
    ],
)
def test_bad_sns_settings_stop_the_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_mapping(env)


def test_sns_settings_defaults_and_lists() -> None:
    default = settings_from_mapping({})
    assert (default.sns_topic_arns, default.sns_signature_versions) == ((), ("1", "2"))
    arns = "arn:aws:sns:us-east-1:123456789012:a, arn:aws-cn:sns:cn-north-1:123456789012:b.fifo"
    chosen = settings_from_mapping({"SNS_TOPIC_ARNS": arns, "SNS_SIGNATURE_VERSIONS": "2"})
    assert len(chosen.sns_topic_arns) == 2 and chosen.sns_signature_versions == ("2",)
    assert settings_from_mapping({"SNS_TOPIC_ARNS": "*"}).sns_topic_arns == ("*",)
