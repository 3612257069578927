"""Turn a Markdown, plain-text or HTML document into a title and sections (heading, paragraphs)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from bs4 import BeautifulSoup
from markdown_it import MarkdownIt
from markdown_it.token import Token

from dialogue.model.contracts import ContentType

SUFFIXES: dict[str, ContentType] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".html": "html",
    ".htm": "html",
}

_MARKDOWN = MarkdownIt("commonmark").enable("table")
CODE_MARK = "\x00code\x00"
"""Marks a paragraph that is a code block: the chunker keeps its lines as they are (and drops the mark)."""


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
    """CommonMark (with tables) by markdown-it: ATX and underlined headings alike, a paragraph, a list
    item, a quote or a table row each a paragraph of plain text (emphasis and links as their words), and a
    code block kept as written, its lines and indentation with it."""
    title = ""
    path: list[tuple[int, str]] = []
    sections = [Section("")]
    heading_level: int | None = None
    row: list[str] | None = None  # the cells of the table row being read
    for token in _MARKDOWN.parse(text):
        paragraph = ""
        if token.type == "heading_open":
            heading_level = int(token.tag[1:])
        elif token.type == "inline" and heading_level is not None:
            name = _plain(token)
            if heading_level == 1 and not title:
                title = name
            else:
                path = [(lvl, n) for lvl, n in path if lvl < heading_level] + [(heading_level, name)]
                sections.append(Section(" > ".join(n for _, n in path)))
            heading_level = None
        elif token.type == "tr_open":
            row = []
        elif token.type == "inline" and row is not None:
            row.append(_plain(token))
        elif token.type == "tr_close":
            paragraph = " | ".join(row) if row and any(row) else ""
            row = None
        elif token.type == "inline":
            paragraph = _plain(token)
        elif token.type in ("fence", "code_block") and token.content.strip():
            paragraph = CODE_MARK + token.content.strip("\n")
        elif token.type == "html_block":
            paragraph = " ".join(BeautifulSoup(token.content, "html.parser").get_text(" ").split())
        if paragraph:
            sections[-1].paragraphs.append(paragraph)
    return ParsedDocument(title or fallback_title, [s for s in sections if s.paragraphs])


def _plain(inline: Token) -> str:
    """An inline token's words: text and code spans, line breaks as spaces, markup and link targets left out."""
    parts = [
        child.content if child.type in ("text", "code_inline", "html_inline") else " "
        for child in inline.children or []
        if child.type in ("text", "code_inline", "html_inline", "softbreak", "hardbreak")
    ]
    return " ".join("".join(parts).split())


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
        if element.name == "pre" and not element.find_parent(["p", "li", "td", "pre", "blockquote"]):
            if code := element.get_text().strip("\n"):  # as written: its lines and indentation
                sections[-1].paragraphs.append(CODE_MARK + code)
            continue
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
