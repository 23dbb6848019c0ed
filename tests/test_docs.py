"""The documentation holds together: the README stays a short page for users, every relative link in
it and in docs/ reaches a file of the repository, each generated block sits, once, on the page
`framebench readme` rewrites, and `readme --check` fails while either page is stale (that the
committed pages are current is test_harness's `readme --check`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from framebench.errors import FrameBenchError
from framebench.reports import readme
from tests.conftest import REPO

README_LIMIT = 10_000  # bytes: what, the two commands, the table, a link per capability; the details live in docs/
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)")  # the target of a Markdown link or image: [text](target "title")
EXTERNAL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # https:, mailto:, ...


def broken_links(page: Path) -> list[str]:
    """The relative link targets on `page` that name no existing file or folder (an anchor is not checked)."""
    targets = [t for t in LINK.findall(page.read_text()) if not EXTERNAL.match(t) and not t.startswith("#")]
    return [t for t in targets if not (page.parent / t.split("#", 1)[0]).exists()]


def test_the_readme_is_at_most_ten_kilobytes():
    size = (REPO / "README.md").stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes; move details into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_reaches_a_file(page):
    assert broken_links(page) == []


def test_a_broken_link_is_found_and_the_others_are_not(tmp_path):
    (tmp_path / "there.md").write_text("")
    page = tmp_path / "page.md"
    page.write_text("[a](there.md) [b](there.md#part) ![c](missing.png) [d](https://example.org/x) [e](#top) [f](gone/x.md#y)")
    assert broken_links(page) == ["missing.png", "gone/x.md#y"]


def test_each_generated_block_is_once_on_its_page_and_on_no_other():
    for page, blocks in readme.PAGES.items():
        for name, (source, _) in blocks.items():
            start, end = readme.markers(name, source)
            for other in PAGES:
                text, here = other.read_text(), other == REPO / page
                assert text.count(start) == text.count(end) == (1 if here else 0), f"{name} block in {other.relative_to(REPO)}"
                assert f"<!-- {name}" not in text or here, f"a stale {name} marker in {other.relative_to(REPO)}"
                if here:
                    assert text.index(start) < text.index(end)


def test_a_page_without_its_block_is_one_line_naming_the_markers():
    source, _ = readme.PAGES["docs/backends.md"]["backends-table"]
    start, end = readme.markers("backends-table", source)
    with pytest.raises(FrameBenchError, match=re.escape(f"docs/backends.md has no backends-table block; put {start} and {end}")):
        readme.generated("docs/backends.md", "# Backends\n")


@pytest.fixture(scope="module")
def blocks():
    """Every generated block's content, made once (the example table reads the committed results)."""
    return {page: {name: make() for name, (_, make) in made.items()} for page, made in readme.PAGES.items()}


@pytest.fixture
def checkout_copy(tmp_path, monkeypatch, blocks):
    """A checkout holding copies of the generated pages, its blocks' sources answering what they answer now."""
    (tmp_path / "docs").mkdir()
    for page in readme.PAGES:
        (tmp_path / page).write_text((REPO / page).read_text())
    pages = {
        page: {name: (source, lambda t=blocks[page][name]: t) for name, (source, _) in made.items()} for page, made in readme.PAGES.items()
    }
    monkeypatch.setattr(readme, "PAGES", pages)
    monkeypatch.setattr(readme, "checkout", lambda: tmp_path)
    return tmp_path


@pytest.mark.parametrize("page", list(readme.PAGES))
def test_check_fails_while_either_page_is_stale_and_the_rewrite_mends_it(checkout_copy, page, capsys):
    path = checkout_copy / page
    (name, (source, _)), *_ = readme.PAGES[page].items()
    _, end = readme.markers(name, source)
    stale = path.read_text().replace(end, f"| a row no source has | 0 |\n{end}")
    path.write_text(stale)
    assert readme.update_readme(check=True) == 1
    assert f"{path}: a generated block differs from its source" in capsys.readouterr().out
    assert readme.update_readme(check=False) == 0
    assert path.read_text() == (REPO / page).read_text() != stale
    assert readme.update_readme(check=True) == 0
