"""Every relative link in the README, the contributor pages and docs/ leads somewhere.

A link is `[text](target)` outside code. A target that is not a URL must name an existing file or
folder (relative to the page), and a `#fragment` must be a heading of the target page, spelt the
way GitHub spells heading anchors. Links to other sites are not fetched.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["README.md", "CONTRIBUTING.md", "CHANGELOG.md", "deploy/README.md"]

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"(`+).+?\1")
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def pages() -> list[Path]:
    found = [ROOT / p for p in PAGES] + sorted((ROOT / "docs").glob("*.md"))
    return [p for p in found if p.is_file()]


def prose_lines(text: str) -> list[str]:
    """The lines of a page outside fenced code blocks, with inline code removed."""
    out: list[str] = []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower-cased, punctuation dropped
    (except `-` and `_`), spaces turned into `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path) -> list[str]:
    out: list[str] = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        line = INLINE_CODE.sub("", line)
        out += LINK.findall(line) + IMAGE.findall(line)
    return out


def broken_links(path: Path) -> list[str]:
    """Each relative link of `path` that leads nowhere, with the reason."""
    problems: list[str] = []
    for target in links(path):
        if EXTERNAL.match(target):
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{target}: no such file")
            continue
        if fragment:
            if dest.is_dir() or dest.suffix != ".md":
                problems.append(f"{target}: an anchor into something that is not a page")
            elif fragment not in anchors(dest):
                problems.append(f"{target}: no heading #{fragment} in {dest.name}")
    return problems


def test_the_pages_exist() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in pages()}
    assert {"README.md", "deploy/README.md"} <= names
    assert any(name.startswith("docs/") for name in names)


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_a_broken_link_or_anchor_is_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## Two words `code`\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Same\n\n## Same\n\n"
        "[ok](other.md) [ok](other.md#two-words-code) [ok](#same-1) [ok](https://example.com)\n"
        "`[not a link](nowhere.md)`\n\n```\n[in code](nowhere.md)\n```\n"
        "[gone](missing.md) [bad anchor](other.md#three) [bad here](#nothing)\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "other.md#three: no heading #three in other.md",
        "#nothing: no heading #nothing in page.md",
    ]


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        (
            "Feedback: SNS, opens, clicks, unsubscribes, suppression",
            "feedback-sns-opens-clicks-unsubscribes-suppression",
        ),
        ("`sesflow dlq`", "sesflow-dlq"),
        (
            "What the fault suite proves (`tests/faults/`, real processes)",
            "what-the-fault-suite-proves-testsfaults-real-processes",
        ),
        ("Time series (Grafana JSON / Infinity)", "time-series-grafana-json--infinity"),
    ],
)
def test_anchors_are_spelt_like_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor
