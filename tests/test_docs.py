"""The README and docs/ link to each other: every relative link must name a file that exists
and, when it has a #fragment, a heading of that file whose GitHub anchor is the fragment.

Links inside fenced code blocks and code spans are not links; http(s) and mailto links are
not checked (no network here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

EXTERNAL = ("http://", "https://", "mailto:")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
HTML_ANCHOR = re.compile(r"<a\s[^>]*?(?:id|name)=\"([^\"]+)\"")
# a code span may wrap onto the next line, not across a blank line
CODE_SPAN = re.compile(r"(`+)(?:(?!\n[ \t]*\n).)+?\1", re.DOTALL)
# [text](target "title") and ![alt](target); the text may wrap and hold one level of [...]
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^\s<>()]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*<?([^\s>]+)>?", re.MULTILINE)


@dataclass(frozen=True)
class Link:
    page: Path
    line: int
    target: str

    def __str__(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}: {self.target}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, every character but letters,
    digits, '-', '_' and spaces dropped (so ':', '→', '`', '/', '(', ')', '.' go), and each
    space a '-' (so "local → peer" is "local--peer")."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts as its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def outside_fences(text: str) -> list[str]:
    """The page's lines, those of fenced code blocks (and their fences) blanked."""
    lines, fence = [], ""
    for line in text.split("\n"):
        opening = FENCE.match(line)
        if fence:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = ""
            lines.append("")
        elif opening:
            fence = opening.group(1)
            lines.append("")
        else:
            lines.append(line)
    return lines


def prose(text: str) -> str:
    """The page with fenced code blocks and code spans blanked out, line breaks kept (so an
    offset in it is on the same line as in the page)."""
    body = "\n".join(outside_fences(text))
    return CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), body)


def anchors(page: Path) -> set[str]:
    """Every anchor a page has: one per heading (a repeated one gets -1, -2, ... as on
    GitHub) and explicit <a id=...> or <a name=...>."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in outside_fences(page.read_text(encoding="utf-8")):
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(HTML_ANCHOR.findall(line))
    return found


def links(page: Path, text: str) -> list[Link]:
    """The relative links of a page, with their line numbers."""
    body = prose(text)
    found = []
    for pattern in (INLINE_LINK, REFERENCE):
        for match in pattern.finditer(body):
            target = match.group(1)
            if target and not target.lower().startswith(EXTERNAL):
                found.append(Link(page, body.count("\n", 0, match.start(1)) + 1, target))
    return sorted(found, key=lambda link: link.line)


def broken(page: Path, text: str) -> list[tuple[Link, str]]:
    """Each link of the page that does not resolve, and why."""
    problems = []
    for link in links(page, text):
        path_part, _, fragment = link.target.partition("#")
        target = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not target.exists():
            problems.append((link, f"no such file: {target}"))
        elif fragment and target.suffix == ".md" and unquote(fragment) not in anchors(target):
            problems.append((link, f"{target.name} has no heading with the anchor #{fragment}"))
    return problems


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Routing: local → peer → cloud", "routing-local--peer--cloud"),
        ("Micro-batching: `handle_batch`", "micro-batching-handle_batch"),
        ("The manifest: `functions.yaml`", "the-manifest-functionsyaml"),
        (
            "Call records: a backup of every call, in the cloud",
            "call-records-a-backup-of-every-call-in-the-cloud",
        ),
        ("Watching the queues with RQ's tools", "watching-the-queues-with-rqs-tools"),
        ("Dead letters, redrive, cancel", "dead-letters-redrive-cancel"),
        ("The path (of one call) / gateway.app", "the-path-of-one-call--gatewayapp"),
        ("See [the mesh](mesh.md) — 3 nodes", "see-the-mesh--3-nodes"),
    ],
)
def test_slug_is_githubs(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_the_checker_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A section: `code` → here\n")
    page = tmp_path / "page.md"
    text = "\n".join(
        [
            "# Page",  # 1
            "[fine](other.md) and [fine too](other.md#a-section-code--here)",  # 2
            "[missing file](nowhere.md) and [missing anchor](other.md#nope)",  # 3
            "[same page](#page) and [not here](#absent)",  # 4
            "```",  # 5
            "[in a fence](nowhere.md)",  # 6
            "```",  # 7
            "`[in a span](nowhere.md)` and [web](https://example.com/x.md)",  # 8
            "[a link whose text",  # 9
            "wraps](gone.md)",  # 10
            "[ref]: missing-ref.md",  # 11
        ]
    )
    page.write_text(text)

    problems = broken(page, text)

    assert [(link.line, link.target) for link, _ in problems] == [
        (3, "nowhere.md"),
        (3, "other.md#nope"),
        (4, "#absent"),
        (10, "gone.md"),
        (11, "missing-ref.md"),
    ]


def test_there_are_docs() -> None:
    assert README.exists()
    assert len(PAGES) > 1, "no Markdown files in docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    problems = broken(page, page.read_text(encoding="utf-8"))
    assert not problems, "broken links:\n" + "\n".join(f"{link} ({why})" for link, why in problems)


def test_the_readme_maps_every_doc() -> None:
    linked = {
        (ROOT / link.target.partition("#")[0]).resolve()
        for link in links(README, README.read_text(encoding="utf-8"))
    }
    unmapped = [page.name for page in PAGES[1:] if page.resolve() not in linked]
    assert not unmapped, f"docs the README does not link to: {unmapped}"
