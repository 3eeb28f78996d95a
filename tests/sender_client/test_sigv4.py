"""The send path's SigV4 signer writes exactly the headers botocore's SigV4Auth writes."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from sesflow.sender.sigv4 import Signer, canonical_path

NOW = 1_764_151_200.5  # 2025-11-26T10:00:00.5Z
BODY = b'{"FromEmailAddress":"a@example.com","Content":{"Simple":{"Subject":{"Data":"\xc3\xbc"}}}}'


def botocore_headers(
    credentials: ReadOnlyCredentials, url: str, host: str, body: bytes, monkeypatch: Any
) -> dict[str, str]:
    fixed = datetime.datetime.fromtimestamp(NOW, datetime.UTC).replace(tzinfo=None)
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: fixed)
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"Host": host, "Content-Type": "application/json"},
    )
    SigV4Auth(credentials, "ses", "eu-west-1").add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEB  temporary//token=="])
@pytest.mark.parametrize(
    ("url", "host"),
    [
        (
            "https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails",
            "email.eu-west-1.amazonaws.com",
        ),
        ("http://127.0.0.1:4566/v2/email/outbound-bulk-emails", "127.0.0.1:4566"),
        ("http://[::1]:8080/prefix/a b/../v2/email/outbound-emails", "[::1]:8080"),
    ],
)
@pytest.mark.parametrize("body", [BODY, b"", b"x" * 70_000])
def test_headers_match_botocores(
    monkeypatch: pytest.MonkeyPatch, token: str | None, url: str, host: str, body: bytes
) -> None:
    credentials = ReadOnlyCredentials(
        "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token
    )
    ours = Signer(credentials, "ses", "eu-west-1", host).headers(canonical_path(url), body, NOW)
    assert ours == botocore_headers(credentials, url, host, body, monkeypatch)


def test_the_signing_key_follows_the_day() -> None:
    credentials = ReadOnlyCredentials("AKID", "secret", None)
    signer = Signer(credentials, "ses", "us-east-1", "h")
    today = signer.headers("/", b"{}", NOW)
    tomorrow = signer.headers("/", b"{}", NOW + 86_400)
    fresh = Signer(credentials, "ses", "us-east-1", "h").headers("/", b"{}", NOW + 86_400)
    assert tomorrow == fresh and today["Authorization"] != tomorrow["Authorization"]
    assert "/20251127/us-east-1/ses/aws4_request" in tomorrow["Authorization"]
