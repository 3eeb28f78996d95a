"""The plain-text part of a message generated from its HTML, when none is given.

inscriptis (Apache-2.0) renders HTML the way a text browser would: block structure, lists,
tables, and each link as `[text](url)`. Placeholders are plain text to it, so `{{name}}` comes
out unchanged and is filled per recipient like in the HTML part.
"""

from __future__ import annotations

from inscriptis import get_text
from inscriptis.model.config import ParserConfig

_CONFIG = ParserConfig(display_links=True)


def html_to_text(html: str) -> str:
    return str(get_text(html, _CONFIG)).strip() + "\n"
