"""Turn a Markdown, plain-text or HTML document into a title and sections (heading, paragraphs)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from bs4 import BeautifulSoup

from dialogue.contracts import ContentType

SUFFIXES: dict[str, ContentType] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".html": "html",
    ".htm": "html",
}

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass
class Section:
    heading: str
    """The heading path below the title, e.g. "Returns > Exceptions"; empty for the text before any heading."""
    paragraphs: list[str] = field(default_factory=list)


@dataclass
class ParsedDocument:
    title: str
    sections: list[Section]


def content_type_of(path: Path) -> ContentType | None:
    return SUFFIXES.get(path.suffix.lower())


def parse(text: str, content_type: ContentType, *, fallback_title: str) -> ParsedDocument:
    if content_type == "html":
        return _parse_html(text, fallback_title)
    if content_type == "markdown":
        return _parse_markdown(text, fallback_title)
    return _parse_text(text, fallback_title)


def _paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def _parse_text(text: str, fallback_title: str) -> ParsedDocument:
    first, _, rest = text.strip().partition("\n")
    # A plain-text document's first line is its title when it is short and the rest follows.
    if rest.strip() and len(first) <= 120:
        return ParsedDocument(first.strip(), [Section("", _paragraphs(rest))])
    return ParsedDocument(fallback_title, [Section("", _paragraphs(text))])


def _parse_markdown(text: str, fallback_title: str) -> ParsedDocument:
    title = ""
    path: list[tuple[int, str]] = []
    sections = [Section("")]
    lines: list[str] = []
    in_fence = False

    def flush() -> None:
        sections[-1].paragraphs += _paragraphs("\n".join(lines))
        lines.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        heading = None if in_fence else _HEADING.match(line)
        if heading is None:
            lines.append(line)
            continue
        flush()
        level, name = len(heading.group(1)), heading.group(2).strip()
        if level == 1 and not title:
            title = name
            continue
        path = [(lvl, n) for lvl, n in path if lvl < level] + [(level, name)]
        sections.append(Section(" > ".join(n for _, n in path)))
    flush()
    return ParsedDocument(title or fallback_title, [s for s in sections if s.paragraphs])


def _parse_html(text: str, fallback_title: str) -> ParsedDocument:
    soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style", "nav", "header", "footer", "noscript"]):
        tag.decompose()
    title_tag = soup.find("h1") or soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag else fallback_title
    body = soup.body or soup
    path: list[tuple[int, str]] = []
    sections = [Section("")]
    for element in body.find_all(["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "td", "pre", "blockquote"]):
        text_of = " ".join(element.get_text(" ", strip=True).split())
        if not text_of:
            continue
        if element.name and element.name[0] == "h" and element.name[1:].isdigit():
            level = int(element.name[1:])
            if level == 1:
                continue
            path = [(lvl, n) for lvl, n in path if lvl < level] + [(level, text_of)]
            sections.append(Section(" > ".join(n for _, n in path)))
        elif not element.find_parent(["p", "li", "td", "pre", "blockquote"]):
            sections[-1].paragraphs.append(text_of)
    return ParsedDocument(title or fallback_title, [s for s in sections if s.paragraphs])
