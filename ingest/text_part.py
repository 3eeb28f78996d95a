"""The plain-text part of a message generated from its HTML, when none is given.

inscriptis (Apache-2.0) renders HTML the way a text browser would: block structure, lists,
tables, and each link as `[text](url)`. The HTML's placeholders are set aside before and put back
after, so `{{name}}` comes out unchanged and is filled per recipient like in the HTML part; and
braces that only the rendering makes (`&#123;&#123;x&#125;&#125;` decodes to `{{x}}`) are kept
from reading as a placeholder the HTML never had.
"""

from __future__ import annotations

import re

from inscriptis import get_text
from inscriptis.model.config import ParserConfig

from sesflow.common.merge import PLACEHOLDER

_CONFIG = ParserConfig(display_links=True)
# Private-use characters around a placeholder's number while inscriptis renders the HTML.
_MASKED = re.compile("\ue000([0-9]+)\ue001")
# Between the braces of a made-up placeholder: invisible, and no longer `{{`.
_ZERO_WIDTH_SPACE = "\u200b"


def html_to_text(html: str) -> str:
    placeholders: list[str] = []

    def set_aside(match: re.Match[str]) -> str:
        placeholders.append(match.group(0))
        return f"\ue000{len(placeholders) - 1}\ue001"

    text = str(get_text(PLACEHOLDER.sub(set_aside, html), _CONFIG)).strip() + "\n"
    text = PLACEHOLDER.sub(lambda m: "{" + _ZERO_WIDTH_SPACE + m.group(0)[1:], text)
    return _MASKED.sub(lambda m: placeholders[int(m.group(1))], text)
