"""The README and the guides stay linked and whole: every relative link finds its file and heading (GitHub's
anchor rules), and every guide in docs/ is reachable from the README's front door."""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit  # pure code: `make check` runs it

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\[\]]|`[^`]*`)*\]\(([^)\s]+)\)")


def _prose(path: Path) -> list[str]:
    """The page's lines, those inside code fences blanked (a link there is an example, not a link)."""
    lines, fenced = [], False
    for line in path.read_text().split("\n"):
        if re.match(r"^\s*(```|~~~)", line):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return lines


def _slug(heading: str) -> str:
    text = re.sub(r"<[^>]+>", "", heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text).strip().lower()
    text = "".join(c for c in text if c in "-_ " or unicodedata.category(c)[0] in "LNM")
    return text.replace(" ", "-")


@cache
def _anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in _prose(path):
        heading = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = _slug(heading.group(2))
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return frozenset(found)


def _links(path: Path) -> list[tuple[int, str]]:
    links = []
    for number, line in enumerate(_prose(path), 1):
        line = re.sub(r"`[^`]*`", lambda m: m.group(0) if "](" in m.group(0) else "", line)
        links += [(number, m.group(1)) for m in LINK.finditer(line) if not re.match(r"^[a-z]+:", m.group(1))]
    return links


def broken_links(path: Path) -> list[str]:
    broken = []
    for number, target in _links(path):
        file, _, anchor = target.partition("#")
        destination = (path.parent / file).resolve() if file else path
        if not destination.exists():
            broken.append(f"{path.name}:{number}: no file {target}")
        elif anchor and (destination.suffix != ".md" or anchor not in _anchors(destination)):
            broken.append(f"{path.name}:{number}: no heading {target}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_finds_its_page_and_heading(page: Path) -> None:
    assert broken_links(page) == []


def test_every_guide_is_linked_from_the_readme() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for _, target in _links(ROOT / "README.md")}
    assert [p.name for p in PAGES[1:] if p not in linked] == []


def test_a_broken_link_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n[ok](#title) [gone](missing.md) [no heading](#nowhere)\n```\n[example](x.md)\n```\n"
    )
    assert broken_links(page) == ["page.md:3: no file missing.md", "page.md:3: no heading #nowhere"]


def test_the_readme_is_a_front_door() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
