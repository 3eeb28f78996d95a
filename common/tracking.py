"""Signed tracking tokens for opens, clicks and unsubscribes.

A token is `<payload>.<mac>`, both base64url without padding: the payload is compact JSON, the
MAC is HMAC-SHA256 under TRACKING_SECRET, truncated to 128 bits. A forged or altered token fails
`verify()`; the tracker still answers (a pixel, a page) but counts nothing.

Kinds: `o` the recipient's token (request id and topic: the open pixel's, and the recipient half
of every click URL), `l` a link token (message id and target URL, signed once per message), `u`
an unsubscribe token (request id, topic, address and mailing list, only in that recipient's
List-Unsubscribe; a token of mail sent before lists names no list).
A click URL carries `<recipient token>~<link token>` (`CLICK_SEPARATOR`; `~` never occurs in a
token), so signing costs one HMAC per recipient however many links the mail has; the tracker
redirects only when both check out and name the same message. `c` (request id, topic and URL in
one token) is what mail sent before carries, and what a link with the recipient's own values in
its URL still gets; the tracker keeps accepting it.

When TRACKING_SECRET is unset, one random secret is generated once and kept in Redis, so every
process of a deployment signs and verifies with the same key.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
from typing import Any

import msgspec

from sesflow.common.connection import Redis
from sesflow.common.keys import Keys, split_request_id
from sesflow.common.settings import Settings

MAC_BYTES = 16


class Token(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    k: str  # kind: "o" recipient (open), "l" link, "u" unsubscribe, "c" click (one token)
    r: str  # request id <msg_id>_<index>; for a link token, the message id
    t: str = ""  # topic
    e: str = ""  # recipient address (unsubscribe)
    u: str = ""  # target URL (click)
    l: str = ""  # noqa: E741  mailing list an unsubscribe leaves ("" in mail sent before lists)


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Token)


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    """base64url without padding; binascii directly, as base64.urlsafe_b64encode does through
    two more calls (a sender encodes four of these per recipient)."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@functools.lru_cache(maxsize=8)
def _keyed(secret: bytes) -> Any:
    """HMAC-SHA256 with the key already absorbed: a copy per token skips re-keying (a sender
    signs one or two tokens per recipient)."""
    return hmac.new(secret, digestmod=hashlib.sha256)


def sign(secret: bytes, token: Token) -> str:
    payload = _enc.encode(token)
    mac = _keyed(secret).copy()
    mac.update(payload)
    return f"{_b64(payload)}.{_b64(mac.digest()[:MAC_BYTES])}"


CLICK_SEPARATOR = "~"


def link_token(secret: bytes, msg_id: str, url: str) -> str:
    """The half of a click URL that seals its target for one message (once per link of a
    message, when its template is compiled)."""
    return sign(secret, Token(k="l", r=msg_id, u=url))


def verify(secret: bytes, text: str) -> Token | None:
    """The token when its MAC checks out, else None (never raises on bad input)."""
    try:
        payload_b64, _, mac_b64 = text.partition(".")
        payload = _unb64(payload_b64)
        expected = hmac.new(secret, payload, hashlib.sha256).digest()[:MAC_BYTES]
        if not hmac.compare_digest(expected, _unb64(mac_b64)):
            return None
        return _dec.decode(payload)
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def verify_click(secret: bytes, text: str) -> Token | None:
    """A click's request id, topic and target URL (as a `c` token) when `text` is a valid
    `<recipient>~<link>` pair of one message, or a valid `c` token; else None."""
    person, sep, link = text.partition(CLICK_SEPARATOR)
    if not sep:
        token = verify(secret, text)
        return token if token is not None and token.k == "c" else None
    who = verify(secret, person)
    where = verify(secret, link)
    if who is None or where is None or who.k != "o" or where.k != "l":
        return None
    # the link must be sealed for the recipient's own message
    parsed = split_request_id(who.r)
    if parsed is None or parsed[0] != where.r:
        return None
    return Token(k="c", r=who.r, t=who.t, u=where.u)


async def tracking_secret(settings: Settings, client: Redis) -> bytes:
    """TRACKING_SECRET, or the deployment's generated secret stored in Redis."""
    if settings.tracking_secret:
        return settings.tracking_secret.encode()
    key = Keys(settings.redis_prefix).secret
    await client.set(key, secrets.token_urlsafe(32), nx=True)
    value = await client.get(key)
    return str(value).encode()
