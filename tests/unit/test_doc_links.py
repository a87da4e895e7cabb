"""Every relative link in the documentation leads somewhere: the file exists, and a `#section`
names a heading (or an `<a id>`) of the page it points at. Pages move between README, INTERNALS
and docs/; a link left pointing at the old home fails here, not in a reader's browser.

Anchors are GitHub's: the heading in lower case, punctuation but `-` and `_` dropped, spaces
turned into `-`, a repeated heading numbered `-1`, `-2` ...
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "INTERNALS.md",
        ROOT / "topics.md",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "deploy").rglob("*.md"),
    ]
)
#: `[text](target)`; a target with a scheme (https:, mailto:) is not ours to check.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:")


def _prose(text: str) -> list[str]:
    """The page's lines outside fenced code blocks (a `#` there is a shell comment)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose(page.read_text(encoding="utf-8")):
        heading = re.match(r"#{1,6} (.*)", line)
        if heading:
            name = slug(heading.group(1))
            repeat = seen.get(name, 0)
            seen[name] = repeat + 1
            found.add(name if repeat == 0 else f"{name}-{repeat}")
        found.update(re.findall(r'<a id="([^"]+)"', line))
    return found


def links(page: Path) -> list[str]:
    found = (t for line in _prose(page.read_text(encoding="utf-8")) for t in LINK.findall(line))
    return [t for t in found if not SCHEME.match(t)]


def test_the_slug_is_githubs() -> None:
    assert slug("Limits: what a client gets at each") == "limits-what-a-client-gets-at-each"
    assert slug("`hls_streaming`: one ffmpeg, presets") == "hls_streaming-one-ffmpeg-presets"
    assert slug("Settings (environment)") == "settings-environment"


def test_the_pages_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "INTERNALS.md", "topics.md", "docs/operations.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)
