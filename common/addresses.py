"""Email address syntax: one recipient address, and one sender mailbox (`from_email`,
EMAIL_SENDER).

A sender is parsed strictly, not with `email.utils.parseaddr`, which is lenient: it reads
`"a@x, b@y"` or `"a@x <b@y>"` as some single address and would let a request choose a From
header that shows one sender and sends as another. Accepted: a bare address, or
`Display Name <address>` where the name is plain text or one quoted string. Refused: lists,
nested or extra angle brackets, an `@` in the display name, control characters and invisible
formatting characters (bidi overrides and isolates, zero-width characters) that can make a
name read differently from what it is. The result is rebuilt with `email.utils.formataddr`, so
a non-ASCII display name is RFC 2047 encoded, as SES requires.

Internationalised addresses: SES has no SMTPUTF8, so an address travels in ASCII. A domain with
non-ASCII characters is converted to IDNA 2008 A-labels (punycode, `bücher.example` ->
`xn--bcher-kva.example`, with UTS 46 mapping so `Bücher.Example` works too) before anything else
sees it: the API, the dispatcher, `sesflow send` and the suppression list all hold the converted
form, so `ü.example` and `xn--tda.example` are one address. A non-ASCII local part cannot be
converted and is refused, with the reason (`InvalidAddress`).
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from email.utils import formataddr

import idna

MAX_ADDRESS_CHARS = 254  # RFC 5321 path limit (256) minus the angle brackets
MAX_LOCAL_CHARS = 64
MAX_DOMAIN_CHARS = 253
MAX_LABEL_CHARS = 63
MAX_DISPLAY_NAME_CHARS = 256

# dot-atom local part (RFC 5322 atext); quoted local parts are legal but SES and most receivers
# mishandle them, so they are refused.
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")
_TLD = re.compile(r"[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59}")
# Characters that would make an unquoted display name mean more than a name (RFC 5322 specials;
# "." is allowed, as in "J. Smith", which RFC 5322's obsolete phrase syntax permits).
_NAME_SPECIALS = frozenset('()<>[]:;@\\,"')
# Control (Cc), format (Cf: bidi marks, overrides, isolates, zero-width), line and paragraph
# separators, surrogates, private use and unassigned characters.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


class InvalidMailbox(ValueError):
    """The text is not exactly one acceptable mailbox; the message says why."""


class InvalidAddress(ValueError):
    """An address SES cannot take. The message says why, without the address, so that it reads
    after it: `'jörg@x.io' has a non-ASCII local part...`. `specific` is False for a plain
    syntax error (the address alone says enough), True for a reason worth showing."""

    def __init__(self, reason: str, specific: bool = True) -> None:
        super().__init__(reason)
        self.specific = specific


NOT_AN_ADDRESS = "is not a valid address"
NON_ASCII_LOCAL = (
    "has a non-ASCII local part (before the @): SES has no SMTPUTF8, so only the domain may be "
    "internationalised"
)


def is_valid_address(address: str) -> bool:
    """Pragmatic RFC 5321 syntax check with its length limits; no DNS lookup, ASCII only
    (SES wants internationalised domains in punycode)."""
    if not address or len(address) > MAX_ADDRESS_CHARS or not address.isascii():
        return False
    local, at, domain = address.rpartition("@")
    if not at or not local or len(local) > MAX_LOCAL_CHARS or not _LOCAL.fullmatch(local):
        return False
    if len(domain) > MAX_DOMAIN_CHARS:
        return False
    labels = domain.split(".")
    if len(labels) < 2 or not _TLD.fullmatch(labels[-1]):
        return False
    return all(len(label) <= MAX_LABEL_CHARS and _LABEL.fullmatch(label) for label in labels)


def ascii_domain(domain: str) -> str:
    """`domain` in ASCII: unchanged when it is ASCII already, else IDNA 2008 A-labels (UTS 46
    mapping: case folded, full-width dots read as dots). Raises InvalidAddress."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidAddress(
            f"has a domain that is not a valid internationalised (IDNA 2008) name: {exc}"
        ) from exc


def ascii_address(text: str) -> str:
    """The address as SES takes it: trimmed, its domain in punycode when it is not ASCII.
    Raises InvalidAddress (a non-ASCII local part, a domain IDNA refuses, bad syntax)."""
    address = text.strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise InvalidAddress(NOT_AN_ADDRESS, specific=False)
    if not local.isascii():
        raise InvalidAddress(NON_ASCII_LOCAL)
    if hidden_character(domain) is None:  # a control character is a syntax error, below
        address = f"{local}@{ascii_domain(domain)}"
    if not is_valid_address(address):
        raise InvalidAddress(NOT_AN_ADDRESS, specific=False)
    return address


def address_key(email: str) -> str:
    """The one spelling of an address that lookups share (the suppression list): trimmed,
    lower-cased, a non-ASCII domain in punycode. Text that is no valid address is only
    trimmed and lower-cased, so any input has a key."""
    address = email.strip()
    local, at, domain = address.rpartition("@")
    if at and not domain.isascii():
        with contextlib.suppress(InvalidAddress):
            address = f"{local}@{ascii_domain(domain)}"
    return address.lower()


def hidden_character(text: str) -> str | None:
    """The first control or invisible formatting character in `text`, if any."""
    for char in text:
        if unicodedata.category(char) in _HIDDEN_CATEGORIES:
            return char
    return None


def parse_mailbox(text: str) -> tuple[str, str]:
    """(display name, address) of exactly one mailbox; raises InvalidMailbox."""
    text = text.strip()
    hidden = hidden_character(text)
    if hidden is not None:
        raise InvalidMailbox(f"contains the invisible or control character U+{ord(hidden):04X}")
    if text.count("<") != text.count(">") or text.count("<") > 1:
        raise InvalidMailbox("must hold one address, at most once in angle brackets")
    if "<" not in text:
        return "", mailbox_address(text)
    head, _, rest = text.partition("<")
    address, _, tail = rest.partition(">")
    if tail.strip():
        raise InvalidMailbox("has text after the address")
    return display_name(head.strip()), mailbox_address(address)


def mailbox_address(text: str) -> str:
    """The address of a mailbox, as SES takes it (see `ascii_address`); raises InvalidMailbox."""
    if text != text.strip():
        raise InvalidMailbox("is not one valid address")
    try:
        return ascii_address(text)
    except InvalidAddress as exc:
        raise InvalidMailbox(str(exc) if exc.specific else "is not one valid address") from exc


def display_name(raw: str) -> str:
    """The name before `<address>`: plain words, or one quoted string (with `\\` escapes)."""
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            raise InvalidMailbox("has an unterminated quoted display name")
        name = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if re.search(r'(?<!\\)"', raw[1:-1]):
            raise InvalidMailbox("has more than one quoted string in the display name")
    else:
        name = raw
        if any(char in _NAME_SPECIALS for char in name):
            raise InvalidMailbox("has a display name with special characters; quote it")
    if "@" in name:
        # A name that looks like an address shows the reader a sender it is not.
        raise InvalidMailbox("has an '@' in the display name")
    if len(name) > MAX_DISPLAY_NAME_CHARS:
        raise InvalidMailbox(f"has a display name over {MAX_DISPLAY_NAME_CHARS} characters")
    return " ".join(name.split())


def normalise_mailbox(text: str) -> str:
    """The one mailbox in `text`, rebuilt: `address`, or `Name <address>` with a non-ASCII name
    RFC 2047 encoded (UTF-8). Raises InvalidMailbox."""
    name, address = parse_mailbox(text)
    return formataddr((name, address), charset="utf-8")
