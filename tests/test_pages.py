"""The written pages of the report (report.pages): docs_src/*.md rendered beside the notebook
pages, with the shared stylesheet and navigation, their links pointed where the files are."""

from __future__ import annotations

import re

import nbformat
import pytest

from microqa.report import pages, site
from tests.conftest import REPO

PAGE = """# Methods

How far to trust each number: see [the probe table](../tables/clip_probe.md) and
[the data page](data.md#labels), the figure ![sizes](../figures/sizes.png).

| a | b |
|---|---|
| 1 | 2 |
"""


def _site(tmp_path, methods: str = PAGE):
    """A checkout in tmp_path: one executed notebook, docs_src/, tables/ and figures/."""
    (tmp_path / "docs_src").mkdir()
    (tmp_path / "docs_src" / "methods.md").write_text(methods)
    (tmp_path / "docs_src" / "data.md").write_text("## Data\n\n<a id='labels'></a>Labels.\n")
    for folder, name in (("tables", "clip_probe.md"), ("figures", "sizes.png")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b"x")
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("# 02 · EDA"))
    nbformat.write(nb, notebooks / "02_eda_class_imbalance.ipynb")
    return notebooks


def test_a_written_page_renders_with_the_stylesheet_navigation_and_resolving_links(tmp_path):
    notebooks = _site(tmp_path)
    docs = tmp_path / "docs"
    built = site.build(notebooks, docs, tables_dir=tmp_path, pages_dir=tmp_path / "docs_src")
    assert docs / "methods.html" in built and docs / "data.html" in built
    page = (docs / "methods.html").read_text()
    assert '<link rel="stylesheet" href="style.css">' in page and (docs / "style.css").exists()
    assert (
        "<title>Methods</title>" in page
        and '<h1 id="methods">' in page
        and "<table>" in page
        and "<td>1</td>" in page
    )
    hrefs = dict(re.findall(r'(?:href|src)="([^"]+)"[^>]*>([^<]*)', page))
    assert hrefs["../tables/clip_probe.md"] == "the probe table"
    assert hrefs["data.html#labels"] == "the data page"
    assert 'src="../figures/sizes.png"' in page
    # the navigation of the notebook pages, with the written pages after them
    assert 'href="index.html"' in page and 'href="02_eda_class_imbalance.html"' in page
    assert "<strong>methods</strong>" in page and 'href="data.html"' in page
    notebook_page = (docs / "02_eda_class_imbalance.html").read_text()
    assert 'href="methods.html"' in notebook_page and 'href="data.html"' in notebook_page
    index = (docs / "index.html").read_text()
    assert '<a href="methods.html">Methods</a>' in index and '<a href="data.html">Data</a>' in index
    assert all(site.broken_links(p) == [] for p in built)


def test_a_link_to_nothing_in_a_written_page_stops_the_build(tmp_path):
    notebooks = _site(tmp_path, methods="# M\n\n[gone](../tables/gone.md) [other](nope.md)\n")
    with pytest.raises(site.SiteError, match="methods.html links what does not exist"):
        site.build(
            notebooks, tmp_path / "docs", tables_dir=tmp_path, pages_dir=tmp_path / "docs_src"
        )


def test_pages_are_listed_in_reading_order(tmp_path):
    for name in ("zeta", "performance", "methods", "data"):
        (tmp_path / f"{name}.md").write_text(f"# {name}\n")
    assert [p.stem for p in pages.sources(tmp_path)] == ["methods", "data", "performance", "zeta"]
    assert pages.sources(tmp_path / "absent") == []


def test_the_committed_pages_link_only_what_exists():
    """Every relative link of docs_src/*.md, read from docs_src/ as a code host does, names a
    file of this checkout; no page types a result with its interval (they point to tables)."""
    source = pages.default_source()
    found = pages.sources(source)
    assert {p.stem for p in found} >= set(pages.ORDER)
    for path in found:
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:|^#", target):
                continue
            assert (source / target.split("#")[0]).exists(), f"{path.name} links {target}"
        assert not re.search(r"\d\.\d\d \[\d\.\d\d, \d\.\d\d\]", text), path.name


def test_the_written_pages_name_no_address_of_a_machine():
    # commands name a placeholder (the URL the mirror prints, a GPU host), never this machine's
    # loopback address, which a reader's machine does not serve
    machine = re.compile(r"127\.0\.0\.1|localhost|0\.0\.0\.0")
    written = sorted((REPO / "docs_src").glob("*.md")) + [REPO / "README.md"]
    assert len(written) > 3
    for page in written:
        found = machine.search(page.read_text(encoding="utf-8"))
        assert found is None, f"{page.name} names {found[0]}"
    # the notebooks' own text and code (their pages; outputs are the site's to rewrite)
    notebooks = sorted((REPO / "notebooks").glob("0*.ipynb"))
    assert len(notebooks) == 5
    for path in notebooks:
        for cell in nbformat.read(path, as_version=4).cells:
            found = machine.search(cell.source)
            assert found is None, f"{path.name} names {found[0]} in {cell.source[:60]!r}"


def test_every_notebook_parameter_a_page_passes_exists():
    # papermill only warns about an unknown `-p name`, and the run quietly uses the default
    declared = set()
    for path in sorted((REPO / "notebooks").glob("0*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if "parameters" in cell.metadata.get("tags", []):
                declared |= set(re.findall(r"^(\w+)\s*(?::[^=]*)?=", cell.source, re.MULTILINE))
    assert {"profile", "clip_models", "vlm_sample_size"} <= declared
    written = sorted((REPO / "docs_src").glob("*.md")) + [REPO / "README.md", REPO / "Makefile"]
    for page in written:
        for name in re.findall(r"(?<!mkdir )(?<![\w-])-p (\w+)", page.read_text(encoding="utf-8")):
            assert name in declared, f"{page.name} passes -p {name}, no notebook's parameter"
