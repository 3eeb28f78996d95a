"""Recipients for `sesflow send`: read from CSV or JSON, checked with the API's own address rule.

CSV: the column named `email` (any case), else the first column holding an address (the first
column when none does); a header row is optional (a first row without any `@` is taken as
one). Comma, semicolon and tab separators work.
JSON: a list of address strings, or of objects with an `email` key.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from common.addresses import is_valid_address


class RecipientsError(ValueError):
    """The file cannot be read as a list of recipients; the message says why."""


@dataclass(slots=True)
class Recipients:
    """The addresses to send to (first spelling kept, file order) and what was left out."""

    emails: list[str] = field(default_factory=list)
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (line or position, value)
    duplicates: int = 0


def read_bytes(path: str) -> bytes:
    """The file's content; `-` reads standard input."""
    import sys

    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise RecipientsError(f"cannot read {path}: {exc.strerror or exc}") from exc


def is_json(path: str, text: str) -> bool:
    return path.lower().endswith(".json") or text.lstrip().startswith(("[", "{"))


def json_values(text: str) -> list[tuple[int, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecipientsError(f"invalid JSON: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("emails"), list):
        data = data["emails"]
    if not isinstance(data, list):
        raise RecipientsError("JSON recipients must be a list of addresses or of {'email': ...}")
    values: list[tuple[int, str]] = []
    for n, item in enumerate(data, start=1):
        if isinstance(item, dict):
            item = item.get("email", item.get("Email"))
        if not isinstance(item, str):
            raise RecipientsError(f"JSON item {n} is not an address nor an object with 'email'")
        values.append((n, item))
    return values


def csv_values(text: str) -> list[tuple[int, str]]:
    sample = text[:8192]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(text), dialect), 1) if any(row)]
    if not rows:
        return []
    names = [cell.strip().lower() for cell in rows[0][1]]
    if "email" in names:
        column = names.index("email")
        rows = rows[1:]
    else:
        if not any("@" in cell for cell in rows[0][1]):
            rows = rows[1:]  # a header naming its columns otherwise
        probe = rows[0][1] if rows else []
        column = next((i for i, cell in enumerate(probe) if "@" in cell), 0)
    return [(n, row[column] if column < len(row) else "") for n, row in rows]


def parse(path: str, data: bytes) -> Recipients:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RecipientsError(f"{path} is not UTF-8 text") from exc
    values = json_values(text) if is_json(path, text) else csv_values(text)
    out = Recipients()
    seen: set[str] = set()
    for where, raw in values:
        address = raw.strip()
        if not is_valid_address(address):
            out.invalid.append((where, raw))
            continue
        folded = address.lower()
        if folded in seen:
            out.duplicates += 1
            continue
        seen.add(folded)
        out.emails.append(address)
    return out
