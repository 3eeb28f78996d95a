"""Stored templates: reusable subject / HTML / text / default data, versioned, in Redis.

A message naming `"template": "<name>"` gets the template's *current* version copied into it when
it is accepted (by the API before it answers 202, by the dispatcher for entries XADDed by
producers): editing or deleting a template never changes mail already accepted. The message's
own `data` is merged over the template's (top-level keys of the message win), and recipients'
data over both.

Every write makes a new version (1, 2, ...; the newest `KEEP_VERSIONS` stay readable); DELETE
removes the template and its versions, and a later PUT of the name starts again at 1.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from sesflow.common import scripts
from sesflow.common.connection import Redis
from sesflow.common.errors import InputError
from sesflow.common.http import decode_json
from sesflow.common.keys import Keys
from sesflow.common.schema import MessageRequest
from sesflow.ingest.merge_data import check_data, check_placeholder_names
from sesflow.ingest.validation import Limits, check_body, check_subject

MAX_NAME_CHARS = 64
KEEP_VERSIONS = 20
MAX_TEMPLATES = 10_000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_FIELDS = {"subject", "html", "content", "text", "data"}


class Template(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One version of a template, as stored (JSON) and as the API answers it."""

    name: str = ""
    version: int = 0
    updated_ms: int = 0
    subject: str
    html: str
    text: str = ""
    data: dict[str, Any] | None = None


class TemplateBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What PUT stores: the caller's fields (version and time are added by template_put.lua)."""

    subject: str
    html: str
    text: str = ""
    data: dict[str, Any] | None = None


_decoder = msgspec.json.Decoder(Template)
_encoder = msgspec.json.Encoder()


def check_name(name: str) -> str:
    if len(name) > MAX_NAME_CHARS or not _NAME.fullmatch(name):
        raise InputError(
            "invalid_template_name",
            f"template name {name[:80]!r}: 1..{MAX_NAME_CHARS} letters, digits, '_', '-', '.', "
            "starting with a letter or digit",
        )
    return name


def parse_body(body: bytes, limits: Limits) -> TemplateBody:
    """A PUT body `{"subject", "html", "text"?, "data"?}` (`content` is an alias of html),
    checked like a message's content."""
    obj = decode_json(body, msgspec.json.decode)
    if not isinstance(obj, dict):
        raise InputError("invalid_type", "body must be a JSON object")
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise InputError("invalid_type", f"unknown fields: {', '.join(unknown)}")
    subject = obj.get("subject")
    html = obj.get("html", obj.get("content"))
    text = obj.get("text")
    if not isinstance(subject, str):
        raise InputError("invalid_type", "subject must be a string")
    if not isinstance(html, str):
        raise InputError("invalid_type", "html must be a string")
    if text is not None and not isinstance(text, str):
        raise InputError("invalid_type", "text must be a string")
    check_subject(subject, limits)
    check_body(html, limits, "html")
    if text and len(text.encode()) > limits.max_content_bytes:
        raise InputError("invalid_text", f"text exceeds {limits.max_content_bytes} bytes")
    data = obj.get("data")
    check_data(data, "data", limits.max_data_bytes)
    check_placeholder_names(subject, html, text or "")
    return TemplateBody(subject=subject, html=html, text=text or "", data=data or None)


class TemplateStore:
    def __init__(self, client: Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.put_script = scripts.register(client, "template_put")

    async def put(self, name: str, body: TemplateBody) -> tuple[int, bool]:
        """Store a new version; (version, whether the template is new)."""
        version, created = await self.put_script(
            keys=[self.keys.template(name), self.keys.templates],
            args=[name, _encoder.encode(body), KEEP_VERSIONS, MAX_TEMPLATES],
        )
        if int(version) == 0:
            raise InputError(
                "too_many_templates", f"at most {MAX_TEMPLATES} templates; delete unused ones"
            )
        return int(version), bool(int(created))

    async def get(self, name: str, version: int | None = None) -> Template | None:
        field = "current" if version is None else str(version)
        raw = await self.client.hget(self.keys.template(name), field)
        if raw is None:
            return None
        return msgspec.structs.replace(_decoder.decode(raw), name=name)

    async def delete(self, name: str) -> bool:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.template(name))
            pipe.zrem(self.keys.templates, name)
            removed, _ = await pipe.execute()
        return bool(removed)

    async def list(self) -> list[dict[str, Any]]:
        """Every template's name, current version and last update, in name order."""
        names = [
            n.decode() if isinstance(n, bytes) else str(n)
            for n in await self.client.zrange(self.keys.templates, 0, -1)
        ]
        if not names:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(self.keys.template(name), "version", "updated_ms")
            rows = await pipe.execute()
        return [
            {"name": name, "version": int(version), "updated_ms": int(updated or 0)}
            for name, (version, updated) in zip(names, rows, strict=True)
            if version is not None  # deleted between the two reads
        ]

    async def resolve(self, message: MessageRequest) -> MessageRequest:
        """The message with its template's current content in it (unchanged without one)."""
        if message.template is None:
            return message
        name = check_name(message.template)
        template = await self.get(name)
        if template is None:
            raise InputError("unknown_template", f"no template named {name!r}")
        return apply(message, template)


def stand_in(message: MessageRequest) -> MessageRequest:
    """For checks made where templates cannot be read (the CLI, dead-letter replay): the message
    with neutral content in place of its template. Everything but the content is checked; the
    template and its placeholders are checked when the message is accepted."""
    if message.template is None:
        return message
    return msgspec.structs.replace(message, template=None, subject="-", content="-", text="-")


def apply(message: MessageRequest, template: Template) -> MessageRequest:
    """Copy a template version into a message: its data under the message's own."""
    data = {**(template.data or {}), **(message.data or {})}
    return msgspec.structs.replace(
        message,
        template=None,
        subject=template.subject,
        content=template.html,
        text=template.text or None,
        data=data or None,
    )
