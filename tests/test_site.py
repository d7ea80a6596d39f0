"""site.py: the rendered report built from the smoke pipeline's executed notebooks, opened in
headless Chromium: every image loads, no traceback, no absolute path of this machine."""

from __future__ import annotations

import shutil
import tempfile

import nbformat
import pytest

from microqa.report import site
from tests.conftest import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
needs_chromium = pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="chromium and chromium-driver not installed (.ci/run installs them)",
)


def _notebook(cells_outputs) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("# 02 · A title\n\nText."))
    for outputs in cells_outputs:
        cell = nbformat.v4.new_code_cell("x = 1")
        cell.outputs = outputs
        nb.cells.append(cell)
    return nb


def test_prepare_keeps_one_banner_at_the_top_and_scrubs_machine_paths(tmp_path):
    short = "**Provenance:** real data"
    full = "## ⚠️ OFFLINE SUBSTITUTES IN USE\n\n- **data**: sample\n- **clip**: random"
    path_text = f"wrote {REPO}/figures/x.png from {tempfile.gettempdir()}/abc/file"
    nb = _notebook(
        [
            [nbformat.v4.new_output("display_data", data={"text/markdown": short})],
            [nbformat.v4.new_output("stream", name="stdout", text=path_text)],
            [
                nbformat.v4.new_output(
                    "stream", name="stderr", text="!!!\nOFFLINE SUBSTITUTE in stage 'x'"
                )
            ],
            [nbformat.v4.new_output("display_data", data={"text/markdown": full})],
        ]
    )
    page = site.prepare(nb, "02_eda_class_imbalance", site.machine_paths())
    sources = [c.source for c in page.cells]
    assert sources[0].startswith("# 02") and sources[1].startswith("Report: [index]")
    assert sources[2] == full  # the most complete banner, once, at the top
    text = nbformat.writes(page)
    assert text.count("OFFLINE SUBSTITUTE") == 1 and "**Provenance:**" not in text
    assert str(REPO) not in text and tempfile.gettempdir() + "/" not in text
    assert "wrote figures/x.png from $TMPDIR/abc/file" in text


def test_a_notebook_with_an_error_is_refused(tmp_path):
    error = nbformat.v4.new_output("error", ename="ValueError", evalue="bad", traceback=["tb"])
    nbformat.write(_notebook([[error]]), tmp_path / "02_eda_class_imbalance.ipynb")
    with pytest.raises(site.SiteError, match="02_eda_class_imbalance: a cell failed"):
        site.build(tmp_path, tmp_path / "docs")


def _browser(profile_dir):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile_dir}",
        "--window-size=1280,1600",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


IMAGES_LOADED = """
const imgs = Array.from(document.images);
return imgs.map(i => [i.complete && i.naturalWidth > 0, (i.src || '').slice(0, 40)]);
"""


@pytest.mark.notebooks
@needs_chromium
def test_the_report_of_the_smoke_pipeline_opens_in_chromium(smoke_pipeline, tmp_path):
    for name in site.NOTEBOOKS:
        smoke_pipeline.run(name)
    notebooks = smoke_pipeline.root / "notebooks"
    docs = tmp_path / "docs"
    pages = site.build(notebooks, docs)
    assert [p.name for p in pages] == ["index.html", *[f"{n}.html" for n in site.NOTEBOOKS]]
    assert sum(p.stat().st_size for p in pages) < site.MAX_BYTES
    forbidden = {
        str(REPO),
        str(REPO.parent) + "/",
        str(smoke_pipeline.root),
        tempfile.gettempdir() + "/",
    }
    for table in (smoke_pipeline.root / "tables").glob("*.md"):  # captions name no machine path
        caption = table.read_text(encoding="utf-8").split("\n\n")[0]
        assert not any(path in caption for path in forbidden), table.name
    driver = _browser(tmp_path / "chromium-profile")
    try:
        n_images = 0
        for page in pages:
            driver.get(page.as_uri())
            text = driver.find_element("tag name", "body").text
            source = driver.page_source
            assert "Traceback" not in text and "Error" not in driver.title, page.name
            for path in forbidden:
                assert path not in source, f"{page.name} shows {path}"
            loaded = driver.execute_script(IMAGES_LOADED)
            assert all(ok for ok, _ in loaded), f"{page.name}: broken images {loaded}"
            n_images += len(loaded)
            if page.name == "index.html":
                links = driver.find_elements("css selector", "ol li a")
                assert len(links) == len(site.NOTEBOOKS)
                screenshot = REPO / "build" / "report-index.png"
                screenshot.parent.mkdir(exist_ok=True)
                driver.save_screenshot(str(screenshot))
            else:
                assert text.count("OFFLINE SUBSTITUTES IN USE") == 1, page.name
        assert n_images >= 10  # the figures and galleries really are on the pages
    finally:
        driver.quit()
