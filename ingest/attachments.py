"""Attachments: checked at accept time, stored once per message (never per recipient).

Each is `{"filename", "content_type", "content"}` with the content in base64 (line breaks
allowed; stored without them). The filename is a plain name (no path, no control character) whose
extension SES accepts: SES refuses messages carrying the types it lists as unsupported
(executables, scripts, shortcuts...), so sesflow refuses them up front. The content type is a
`type/subtype` token, guessed from the filename when left out.

The size that counts is the whole message as SES receives it: SESv2 accepts up to 40 MB
(MAX_MESSAGE_BYTES) *after* base64 encoding. `message_bytes` estimates it from the parts; a
message above the limit gets 413.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from collections.abc import Sequence

import msgspec

from sesflow.common.errors import InputError
from sesflow.common.schema import Attachment

MAX_ATTACHMENTS = 50
MAX_FILENAME_CHARS = 255
# Base64 in MIME is cut into 76-character lines ending with CRLF.
MIME_LINE = 76
# Headers, boundaries and the per-recipient tracking added to the parts: a generous allowance.
MIME_OVERHEAD = 16 * 1024

# https://docs.aws.amazon.com/ses/latest/dg/attachments.html: "Unsupported attachment types".
_BLOCKED = (
    "ade adp app asp bas bat cer chm cmd com cpl crt csh der exe "
    "fxp gadget hlp hta inf ins isp its js jse ksh lib lnk mad maf "
    "mag mam maq mar mas mat mau mav maw mda mdb mde mdt mdw mdz "
    "msc msh msh1 msh2 mshxml msh1xml msh2xml msi msp mst ops pcd pif plg prf "
    "prg reg scf scr sct shb shs sys ps1 ps1xml ps2 ps2xml psc1 psc2 tmp "
    "url vb vbe vbs vps vsmacros vss vst vsw vxd ws wsc wsf wsh xnk "
)
BLOCKED_EXTENSIONS = frozenset(_BLOCKED.split())

MAX_CONTENT_TYPE_CHARS = 78  # SESv2's AttachmentContentType
_CONTENT_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)
_FILENAME_FORBIDDEN = re.compile(r'[\x00-\x1f\x7f/\\"]')
_WHITESPACE = re.compile(r"\s+")
_encoder = msgspec.json.Encoder()


def check_filename(name: str, where: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_FILENAME_CHARS or name in {".", ".."}:
        raise InputError("invalid_attachment", f"{where}.filename must be 1..255 characters")
    if _FILENAME_FORBIDDEN.search(name):
        raise InputError(
            "invalid_attachment",
            f"{where}.filename {name[:80]!r}: no path, quote or control character",
        )
    extension = name.rpartition(".")[2].lower() if "." in name else ""
    if extension in BLOCKED_EXTENSIONS:
        raise InputError(
            "invalid_attachment",
            f"{where}.filename {name[:80]!r}: SES does not accept .{extension} attachments",
        )
    return name


def check_content_type(value: str, filename: str, where: str) -> str:
    value = value.strip()
    if not value:
        return mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if len(value) > MAX_CONTENT_TYPE_CHARS or not _CONTENT_TYPE.fullmatch(value):
        raise InputError(
            "invalid_attachment", f"{where}.content_type {value[:80]!r} is not type/subtype"
        )
    return value.lower()


def check_content(value: str, where: str) -> str:
    compact = _WHITESPACE.sub("", value)
    if not compact:
        raise InputError("invalid_attachment", f"{where}.content is empty")
    try:
        base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError("invalid_attachment", f"{where}.content is not valid base64") from exc
    return compact


def check_attachments(attachments: Sequence[Attachment]) -> tuple[list[Attachment], str]:
    """The attachments normalised, and their JSON as stored in the content hash ("" if none)."""
    if not attachments:
        return [], ""
    if len(attachments) > MAX_ATTACHMENTS:
        raise InputError(
            "invalid_attachment", f"{len(attachments)} attachments; at most {MAX_ATTACHMENTS}"
        )
    clean: list[Attachment] = []
    for n, item in enumerate(attachments):
        where = f"attachments[{n}]"
        filename = check_filename(item.filename, where)
        clean.append(
            Attachment(
                filename=filename,
                content_type=check_content_type(item.content_type, filename, where),
                content=check_content(item.content, where),
            )
        )
    return clean, _encoder.encode(clean).decode()


def encoded_bytes(base64_chars: int) -> int:
    """Bytes a base64 body takes in MIME, with its CRLF line breaks."""
    return base64_chars + 2 * -(-base64_chars // MIME_LINE)


def message_bytes(
    subject: str,
    html: str,
    text: str,
    headers: Sequence[tuple[str, str]],
    attachments: Sequence[Attachment],
) -> int:
    """An upper estimate of the MIME message SES receives: the text parts go out as
    quoted-printable or base64 (at most 4/3 of their UTF-8 size, plus line breaks)."""
    body = 0
    for part in (html, text):
        body += encoded_bytes(-(-len(part.encode()) * 4 // 3))
    header_bytes = len(subject.encode()) * 2 + sum(len(k) + len(v.encode()) + 4 for k, v in headers)
    files = sum(encoded_bytes(len(a.content)) + len(a.filename) * 2 for a in attachments)
    return MIME_OVERHEAD + header_bytes + body + files
