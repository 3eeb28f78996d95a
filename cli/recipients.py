"""Recipients for `sesflow send`: read from CSV or JSON, checked with the API's own address rule.

CSV: the column named `email` (any case), else the first column holding an address (the first
column when none does); a header row is optional (a first row without any `@` is taken as
one). Comma, semicolon and tab separators work. With a header row, every other column is the
recipient's merge data, named by its header (`{{first_name}}`); an empty cell is left out, so
the message's default applies (or the API lists the recipient as missing it).
JSON: a list of address strings, or of objects with an `email` key; an object's `data` object,
else its other keys, are the recipient's merge data.

Addresses follow the API's rule (`common.addresses.ascii_address`): a non-ASCII domain is
converted to punycode (and reported, so the operator sees what will be sent), a non-ASCII local
part is left out with the reason.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sesflow.common.addresses import InvalidAddress, ascii_address


class RecipientsError(ValueError):
    """The file cannot be read as a list of recipients; the message says why."""


@dataclass(slots=True)
class Recipients:
    """The addresses to send to (first spelling kept, file order) and what was left out."""

    emails: list[str] = field(default_factory=list)
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (line or position, value)
    # why an invalid value was left out, when more than its syntax is wrong
    why: dict[int, str] = field(default_factory=dict)
    # (line or position, as given, as sent): internationalised domains converted to punycode
    converted: list[tuple[int, str, str]] = field(default_factory=list)
    duplicates: int = 0
    # Each address's own merge data, in the order of `emails` ({} when none).
    data: list[dict[str, Any]] = field(default_factory=list)

    @property
    def personalised(self) -> bool:
        return any(self.data)


Row = tuple[int, str, dict[str, Any]]  # (line or position, address, merge data)


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


def json_values(text: str) -> list[Row]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecipientsError(f"invalid JSON: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("emails"), list):
        data = data["emails"]
    if not isinstance(data, list):
        raise RecipientsError("JSON recipients must be a list of addresses or of {'email': ...}")
    values: list[Row] = []
    for n, item in enumerate(data, start=1):
        own: dict[str, Any] = {}
        if isinstance(item, dict):
            nested = item.get("data")
            if isinstance(nested, dict):
                own = nested
            else:
                own = {k: v for k, v in item.items() if k not in {"email", "Email"}}
            item = item.get("email", item.get("Email"))
        if not isinstance(item, str):
            raise RecipientsError(f"JSON item {n} is not an address nor an object with 'email'")
        values.append((n, item, own))
    return values


def csv_values(text: str) -> list[Row]:
    sample = text[:8192]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(text), dialect), 1) if any(row)]
    if not rows:
        return []
    header = [cell.strip() for cell in rows[0][1]]
    names: list[str] = []
    if "email" in [name.lower() for name in header]:
        column = [name.lower() for name in header].index("email")
        names, rows = header, rows[1:]
    else:
        if not any("@" in cell for cell in rows[0][1]):
            names, rows = header, rows[1:]  # a header naming its columns otherwise
        probe = rows[0][1] if rows else []
        column = next((i for i, cell in enumerate(probe) if "@" in cell), 0)
    return [
        (n, row[column] if column < len(row) else "", row_data(names, row, column))
        for n, row in rows
    ]


def row_data(names: list[str], row: list[str], column: int) -> dict[str, Any]:
    """The other cells of a row, named by the header; empty cells and unnamed columns left out."""
    return {
        name: cell
        for i, (name, cell) in enumerate(zip(names, row, strict=False))
        if i != column and name and cell != ""
    }


def parse(path: str, data: bytes) -> Recipients:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RecipientsError(f"{path} is not UTF-8 text") from exc
    values = json_values(text) if is_json(path, text) else csv_values(text)
    out = Recipients()
    seen: set[str] = set()
    for where, raw, own in values:
        try:
            address = ascii_address(raw)
        except InvalidAddress as exc:
            out.invalid.append((where, raw))
            if exc.specific:
                out.why[where] = str(exc)
            continue
        folded = address.lower()
        if folded in seen:
            out.duplicates += 1
            continue
        seen.add(folded)
        if address != raw.strip():
            out.converted.append((where, raw.strip(), address))
        out.emails.append(address)
        out.data.append(own)
    return out
