"""AWS Signature Version 4 for the send path's one kind of request: a POST of a JSON body, no
query string. It writes exactly the headers botocore's `SigV4Auth` writes for that
request (a test compares them), at a fraction of the CPU: botocore builds an `AWSRequest`,
prepares it and derives the signing key anew for every signature (~70 us for a SendBulkEmail
body), which the single-recipient path pays once per recipient. Here the signed headers are
fixed, the canonical path is computed once per URL and the signing key once per day.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote, urlsplit

from botocore.credentials import ReadOnlyCredentials
from botocore.utils import normalize_url_path

ALGORITHM = "AWS4-HMAC-SHA256"
CONTENT_TYPE = "application/json"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def canonical_path(url: str) -> str:
    """The URL's path as SigV4 canonicalises it (as botocore does for a non-S3 service)."""
    return quote(normalize_url_path(urlsplit(url).path), safe="/~")


class Signer:
    """Signs POSTs of JSON to one host (its Host header `host`) with one set of frozen
    credentials."""

    def __init__(
        self, credentials: ReadOnlyCredentials, service: str, region: str, host: str
    ) -> None:
        self.credentials = credentials
        self.service = service
        self.region = region
        self.host = host
        token = credentials.token
        self.signed = "content-type;host;x-amz-date" + (";x-amz-security-token" if token else "")
        self._day = ""
        self._key = b""

    def _signing_key(self, day: str) -> bytes:
        if day != self._day:
            key = _hmac(f"AWS4{self.credentials.secret_key}".encode(), day)
            for part in (self.region, self.service, "aws4_request"):
                key = _hmac(key, part)
            self._day, self._key = day, key
        return self._key

    def headers(self, path: str, body: bytes, now: float | None = None) -> dict[str, str]:
        """Host, Content-Type, X-Amz-Date, X-Amz-Security-Token (temporary credentials) and
        Authorization for a POST of `body` to `path` (a `canonical_path`)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        day = stamp[:8]
        token = self.credentials.token
        canonical_headers = (
            f"content-type:{CONTENT_TYPE}\nhost:{self.host}\nx-amz-date:{stamp}\n"
            + (f"x-amz-security-token:{' '.join(token.split())}\n" if token else "")
        )
        canonical = "\n".join(
            (
                "POST",
                path,
                "",
                canonical_headers,
                self.signed,
                hashlib.sha256(body).hexdigest(),
            )
        )
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        headers = {"Host": self.host, "Content-Type": CONTENT_TYPE, "X-Amz-Date": stamp}
        if token:
            headers["X-Amz-Security-Token"] = token
        headers["Authorization"] = (
            f"{ALGORITHM} Credential={self.credentials.access_key}/{scope}, "
            f"SignedHeaders={self.signed}, Signature={signature}"
        )
        return headers
