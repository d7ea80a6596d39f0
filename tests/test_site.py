"""site.py: the rendered report built from the smoke pipeline's executed notebooks, opened in
headless Chromium: every image loads, no traceback, no absolute path of this machine."""

from __future__ import annotations

import base64
import io
import re
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from microqa.data import doitpoms
from microqa.report import index, plots, site
from microqa.report import pages as pages_module
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
    copy = nbformat.reads(nbformat.writes(nb), 4)
    page = site.prepare(nb, "02_eda_class_imbalance", site.machine_paths())
    sources = [c.source for c in page.cells]
    assert sources[0].startswith("# 02") and sources[1].startswith("Report: [index]")
    assert sources[2] == full  # the most complete banner, once, at the top
    text = nbformat.writes(page)
    assert text.count("OFFLINE SUBSTITUTE") == 1 and "**Provenance:**" not in text
    assert str(REPO) not in text and tempfile.gettempdir() + "/" not in text
    assert "wrote figures/x.png from $TMPDIR/abc/file" in text
    again = site.prepare(copy, "02_eda_class_imbalance", site.machine_paths())
    assert [c.id for c in again.cells] == [c.id for c in page.cells]  # a rebuild: the same page


def test_a_progress_bar_and_the_widgets_state_stay_off_the_page():
    """A tqdm bar in a notebook is a widget whose text form is its first frame: a page that
    kept it would show the run frozen at 0%. The output beside it stays."""
    bar_text = "embed ViT-B-32:openai:   0%|          | 0/870 [00:00<?, ?img/s]"
    bar = nbformat.v4.new_output(
        "display_data",
        data={"text/plain": bar_text, site.WIDGET_MIME: {"model_id": "abc123", "version_major": 2}},
    )
    summary = (
        "Qwen/Qwen3-VL-8B-Instruct: 30 questions about 2 images, 30 asked now, 0 from the cache"
    )
    nb = _notebook([[bar, nbformat.v4.new_output("stream", name="stdout", text=summary)]])
    nb.metadata["widgets"] = {
        "application/vnd.jupyter.widget-state+json": {"state": {"abc123": {}}, "version_major": 2}
    }
    html = site.render(site.prepare(nb, "03_clip_zero_shot", site.machine_paths()), "03")
    assert "0/870" not in html and "widget-state" not in html and "abc123" not in html
    assert summary in html


def _png(width: int, height: int, noise: bool = False) -> str:
    rng = np.random.default_rng(0)
    pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    pixels[10:20, 10:200] = (31, 119, 180)  # a bar of a chart
    if noise:  # a micrograph: every pixel its own grey
        pixels[:] = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _image_output(data: str, alt: str = "") -> nbformat.NotebookNode:
    metadata = {"image/png": {"alt": alt}} if alt else {}
    return nbformat.v4.new_output("display_data", data={"image/png": data}, metadata=metadata)


def test_a_page_links_one_stylesheet_and_its_figures_as_files_with_alt_text(tmp_path):
    chart, photo = _png(2400, 600), _png(1800, 600, noise=True)
    nb = _notebook(
        [
            [nbformat.v4.new_output("stream", name="stdout", text=f"{site.LOG_POINTER} x.log\n")],
            [nbformat.v4.new_output("stream", name="stderr", text="SKIPPED: ViT-L-14 (Runtim")],
            [_image_output(chart, alt="Class sizes per technique family")],
            [_image_output(photo)],
            [
                nbformat.v4.new_output(
                    "execute_result",
                    data={
                        "text/plain": "x",
                        "text/html": "data from http://127.0.0.1:8765/miclib/",
                    },
                )
            ],
        ]
    )
    nbformat.write(nb, tmp_path / "02_eda_class_imbalance.ipynb")
    docs = tmp_path / "docs"
    pages = site.build(tmp_path, docs, tables_dir=tmp_path / "no-tables")
    page = (docs / "02_eda_class_imbalance.html").read_text()
    assert '<link rel="stylesheet" href="style.css">' in page and "<style" not in page
    assert (docs / "style.css").stat().st_size > 100_000  # nbconvert's CSS, written once
    assert "SKIPPED" not in page and site.LOG_POINTER not in page and "127.0.0.1" not in page
    assert doitpoms.PUBLIC_LIBRARY in page
    tags = re.findall(r"<img [^>]*>", page)
    sources = [(re.search(r'src="([^"]+)"', t)[1], re.search(r'alt="([^"]*)"', t)[1]) for t in tags]
    assert [alt for _, alt in sources] == [
        "Class sizes per technique family",
        "figure 2 of 02_eda_class_imbalance",
    ]
    chart_file, photo_file = (docs / src for src, _ in sources)
    assert chart_file.suffix == ".png" and photo_file.suffix == ".jpg"  # photographic: JPEG
    assert Image.open(chart_file).width == site.IMAGE_PX  # downscaled from 2,400 px
    assert Image.open(photo_file).width == plots.PAGE_PX  # a gallery: no wider than shown
    assert "base64" not in page
    assert all(site.broken_links(p) == [] for p in pages)


def test_links_to_tables_point_where_the_run_wrote_them_and_a_dead_link_is_an_error(tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "comparison.md").write_text("| a |\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    page = site.resolve_links('<a href="tables/comparison.md">t</a> <a href="#x">y</a>', docs)
    assert page == '<a href="../tables/comparison.md">t</a> <a href="#x">y</a>'
    (docs / "p.html").write_text(page + '<a href="tables/gone.md">g</a><img src="img/none.png">')
    assert site.broken_links(docs / "p.html") == ["tables/gone.md", "img/none.png"]
    guide = site.resolve_links('<a href="docs_src/real_study.md">r</a>', docs)  # as the README
    assert guide == '<a href="real_study.html">r</a>'  # its rendered page, which check requires


def test_a_page_over_its_size_limit_is_refused(tmp_path, monkeypatch):
    nb = _notebook([[_image_output(_png(1000, 800, noise=True))]])
    nbformat.write(nb, tmp_path / "03_clip_zero_shot.ipynb")
    monkeypatch.setattr(site, "MAX_PAGE_BYTES", 50_000)
    with pytest.raises(site.SiteError, match="03_clip_zero_shot.html is .* over 1.5 MB"):
        site.build(tmp_path, tmp_path / "docs", tables_dir=tmp_path)


def _probe_table(tables):
    rows = []
    for cv, low, mid, high, clusters, unit in (
        ("grouped by specimen", 0.70, 0.78, 0.82, 383, "specimens"),
        ("grouped by contributor", 0.51, 0.58, 0.63, 46, "contributors"),
        ("stratified (ungrouped)", 0.75, 0.81, 0.85, 383, "specimens"),
    ):
        rows.append(
            {
                "features": "reference ViT-B/32 (pretrained)",
                "task": "technique",
                "probe": "logreg (standardised, C=1)",
                "cv": cv,
                "n": 836,
                "n_specimens": 383,
                "n_clusters": clusters,
                "resampled": unit,
                "balanced_accuracy": mid,
                "balanced_accuracy_ci_low": low,
                "balanced_accuracy_ci_high": high,
            }
        )
    rows.append({**rows[0], "features": "ViT-B-32 [RANDOM WEIGHTS]", "balanced_accuracy": 0.137})
    balanced = "logreg (standardised, C=1, balanced class weights)"
    rows.append({**rows[0], "probe": balanced, "balanced_accuracy": 0.8})
    rows.append({**rows[1], "probe": balanced, "balanced_accuracy": 0.61})
    pd.DataFrame(rows).to_csv(tables / "clip_probe.csv", index=False)


def test_the_index_puts_the_findings_from_the_tables_first(tmp_path):
    _probe_table(tmp_path)
    banner = "## ⚠️ OFFLINE SUBSTITUTES IN USE\n\n- **clip**: ViT-B-32 → random weights."
    text, written = index.page([("03_clip_zero_shot", "03 · CLIP")], [banner], tmp_path, tmp_path)
    found = text[text.index("What we found") : text.index("What awaits real weights")]
    assert (
        "technique: balanced accuracy 0.78 [0.70, 0.82] holding out specimens; "
        "0.58 [0.51, 0.63] holding out contributors "
        "(n = 836 images, 383 specimens, 46 contributors; chance 0.20)" in found
    )
    assert "its 95% interval resamples, within class, the unit the row holds out" in found
    assert (
        "Trained with balanced class weights (a variant fixed in advance, not chosen on these "
        "scores), the same probe reaches technique 0.80 [0.70, 0.82] holding out specimens."
    ) in found
    assert "0.61" not in found  # the headline is the plain probe's; only specimens for the variant
    assert "0.14" not in found and "ungrouped" not in found  # random weights, leaky folds
    assert written == [tmp_path / "findings.png"] and 'src="' + tmp_path.name in found
    awaits = text[text.index("What awaits real weights") :]
    assert "<strong>clip</strong>: ViT-B-32 → random weights." in awaits
    assert "<code>make reproduce</code>" in awaits
    assert text.index("What we found") < text.index('href="03_clip_zero_shot.html"')


def test_the_index_types_no_number_when_a_table_is_absent(tmp_path):
    text, written = index.page([], [], tmp_path, tmp_path)
    assert written == [] and "No result table of this run holds a finding yet" in text
    assert not re.search(r"\d\.\d\d", text)


def test_a_people_table_has_no_index_short_numbers_and_constant_columns_in_the_caption():
    df = pd.DataFrame(
        {
            "view": ["lab"] * 3,
            "model": ["a very long model name that is not cut", "b", "c"],
            "balanced_accuracy": [0.812345, 0.5, float("nan")],
            "n": [836, 10, 2],
        },
        index=[0, 2, 4],
    )
    shown, caption = plots.for_people(df, "Probes")
    assert caption == "Probes; view: lab"
    assert list(shown.columns) == ["model", "balanced accuracy", "n"]
    assert shown["balanced accuracy"].tolist() == ["0.812", "0.5", "–"]
    html = plots.table_html(df, "Probes")
    assert "<caption>Probes; view: lab</caption>" in html
    assert "<th></th>" not in html and ">4<" not in html  # no index column
    assert "a very long model name that is not cut" in html


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
return imgs.map(i => [i.complete && i.naturalWidth > 0, (i.src || '').slice(0, 60)]);
"""
IMAGE_SOURCES = "return Array.from(document.images).map(i => i.src);"
LINKS = """
return Array.from(document.querySelectorAll('a[href], img[src], link[href]'))
  .map(e => e.href || e.src);
"""
# what a reader sees outside <code> (a command such as DOITPOMS_URL=... may name a mirror)
TEXT_OUTSIDE_CODE = """
const body = document.body.cloneNode(true);
body.querySelectorAll('code').forEach(c => c.remove());
return body.innerText;
"""
STDERR = "[data-mime-type='application/vnd.jupyter.stderr']"
RAW_DICT = re.compile(r"""^\s*\{\s*["'][^"']+["']\s*:""", flags=re.M)  # JSON or a Python repr
MACHINE_URL = re.compile(r"https?://(127\.0\.0\.1|localhost|0\.0\.0\.0)\b")


def check_site_in_browser(driver, docs) -> int:
    """Open every page of a rendered site and check what a reader meets; returns the number
    of images shown. The index shows its findings and their figure; every href/src resolves;
    no stderr block, raw dict or machine URL; the size limits hold."""
    from urllib.parse import unquote, urlparse

    pages = sorted(docs.glob("*.html"))
    assert sum(p.stat().st_size for p in docs.rglob("*") if p.is_file()) <= site.MAX_BYTES
    n_images = 0
    for page in pages:
        driver.get(page.as_uri())
        text = driver.find_element("tag name", "body").text
        assert "Traceback" not in text and "Error" not in driver.title, page.name
        loaded = driver.execute_script(IMAGES_LOADED)
        assert all(ok for ok, _ in loaded), f"{page.name}: broken images {loaded}"
        n_images += len(loaded)
        linked = []
        for url in driver.execute_script(LINKS):
            parsed = urlparse(url)
            if parsed.scheme == "file":
                target = Path(unquote(parsed.path))
                assert target.exists(), f"{page.name} links {url}, which does not exist"
                linked.append(target)
            else:
                assert not MACHINE_URL.match(url), f"{page.name} links {url}"
        shown = {Path(unquote(urlparse(u).path)) for u in driver.execute_script(IMAGE_SOURCES)}
        images = {t for t in linked if t in shown}  # a figure only linked is not loaded
        size = page.stat().st_size + sum(t.stat().st_size for t in images)
        assert size <= site.MAX_PAGE_BYTES, f"{page.name}: {size} bytes with its images"
        assert not driver.find_elements("css selector", STDERR), f"{page.name} shows stderr"
        assert not RAW_DICT.search(text), f"{page.name} shows a raw dict"
        assert not MACHINE_URL.search(driver.execute_script(TEXT_OUTSIDE_CODE)), page.name
        assert "Library logs" not in text, page.name
        if page.name == "index.html":
            found = driver.find_element("id", "what-we-found")
            assert found.is_displayed()
            assert driver.find_elements("id", "what-awaits-real-weights")
            figure = driver.find_elements("css selector", "figure img")
            assert figure and figure[0].get_attribute("alt"), "the findings figure"
            assert driver.execute_script("return arguments[0].naturalWidth", figure[0]) > 0
    return n_images


@needs_chromium
def test_a_rendered_site_passes_the_browser_checks(tmp_path):
    _probe_table(tmp_path)
    tables = tmp_path
    nb = _notebook(
        [
            [nbformat.v4.new_output("stream", name="stderr", text="SKIPPED: x (RuntimeErr")],
            [_image_output(_png(1400, 500), alt="Class sizes")],
            [nbformat.v4.new_output("stream", name="stdout", text="see tables/clip_probe.csv\n")],
        ]
    )
    nb.cells.append(nbformat.v4.new_markdown_cell("[the table](tables/clip_probe.csv)"))
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    nbformat.write(nb, notebooks / "02_eda_class_imbalance.ipynb")
    docs = tmp_path / "site" / "docs"
    (tmp_path / "site" / "tables").mkdir(parents=True)
    (tmp_path / "site" / "tables" / "clip_probe.csv").write_text("a\n1\n")
    site.build(notebooks, docs, tables_dir=tables)
    driver = _browser(tmp_path / "chromium-profile")
    try:
        assert check_site_in_browser(driver, docs) == 2  # the figure and the findings figure
    finally:
        driver.quit()


@pytest.mark.notebooks
@needs_chromium
def test_the_report_of_the_smoke_pipeline_opens_in_chromium(smoke_pipeline, tmp_path, monkeypatch):
    for name in site.NOTEBOOKS:
        smoke_pipeline.run(name)
    for key, value in smoke_pipeline.env.items():  # the site reads this run's tables and figures
        monkeypatch.setenv(key, value)
    notebooks = smoke_pipeline.root / "notebooks"
    root = smoke_pipeline.root  # laid out as the repository: docs/ beside tables/, figures/,
    docs = root / "docs"  # the written pages' sources and the files they link
    shutil.copytree(REPO / "docs_src", root / "docs_src")
    for linked in ("README.md", "data/sample/LICENSE.md"):
        (root / linked).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / linked, root / linked)
    pages = site.build(notebooks, docs, pages_dir=root / "docs_src")
    written = [f"{p.stem}.html" for p in pages_module.sources(pages_module.default_source())]
    assert len(written) >= 6  # methods, data, running, the real study, GPUs, performance
    notebook_pages = [f"{n}.html" for n in site.NOTEBOOKS]
    assert [p.name for p in pages] == ["index.html", *notebook_pages, *written]
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
        assert check_site_in_browser(driver, docs) >= 10  # figures and galleries are shown
        for page in pages:
            driver.get(page.as_uri())
            for path in forbidden:
                assert path not in driver.page_source, f"{page.name} shows {path}"
            if page.name == "index.html":
                screenshot = REPO / "build" / "report-index.png"
                screenshot.parent.mkdir(exist_ok=True)
                driver.save_screenshot(str(screenshot))
            elif page.name in notebook_pages:  # each notebook page: its banner, once
                text = driver.find_element("tag name", "body").text
                assert text.count("OFFLINE SUBSTITUTES IN USE") == 1, page.name
    finally:
        driver.quit()


def test_a_timing_dict_reads_as_a_sentence():
    timing = {
        "ViT-B-32:openai": {"seconds_per_image": 0.0125, "device": "cpu", "n": 60},
        "RN50:openai": {},
    }
    assert plots.timing_sentence(timing) == (
        "Embedding time: ViT-B-32:openai: 12.5 ms per image on cpu (60 images)."
    )
    assert plots.timing_sentence({}) == "No embedding was timed."


def test_the_calibration_and_per_class_findings_read_the_real_probe_rows(tmp_path):
    probe = {"kind": "clip_probe", "weights": "pretrained", "prompt_set": "logreg-grouped-cv"}
    noise = {"kind": "clip_zero_shot", "weights": "random", "prompt_set": "cross-fitted"}
    pd.DataFrame(
        [
            {**probe, "task": "technique", "mean_confidence": 0.95, "accuracy": 0.9,
             "ece_before": 0.061, "ece_before_ci_low": 0.04, "ece_before_ci_high": 0.08,
             "ece_after": 0.041, "ece_after_ci_low": 0.02, "ece_after_ci_high": 0.06,
             "ece_change": -0.02, "ece_change_ci_low": -0.03, "ece_change_ci_high": -0.01},
            {**noise, "task": "technique", "mean_confidence": 0.3, "accuracy": 0.1,
             "ece_before": 0.5, "ece_before_ci_low": 0.4, "ece_before_ci_high": 0.6,
             "ece_after": 0.2, "ece_after_ci_low": 0.1, "ece_after_ci_high": 0.3,
             "ece_change": -0.3, "ece_change_ci_low": -0.4, "ece_change_ci_high": -0.2},
        ]
    ).to_csv(tmp_path / "calibration.csv", index=False)  # fmt: skip
    rows = [("Metal", 0.959, 0.94, 0.97, 600), ("Composite", 0.255, 0.14, 0.38, 50),
            ("Ceramic", 0.468, 0.32, 0.62, 80)]  # fmt: skip
    pd.DataFrame(
        [{**probe, "task": "category", "class": c, "recall": r, "recall_ci_low": lo,
          "recall_ci_high": hi, "n": n} for c, r, lo, hi, n in rows]
        + [{**noise, "task": "category", "class": "Metal", "recall": 0.01, "recall_ci_low": 0,
            "recall_ci_high": 0.02, "n": 600}]
    ).to_csv(tmp_path / "per_class.csv", index=False)  # fmt: skip
    found = {f.table: f.sentence for f in index.findings(tmp_path)}
    assert "technique: mean confidence 0.95 against accuracy 0.90" in found["calibration"]
    assert "0.06 [0.04, 0.08] before and 0.04 [0.02, 0.06] after" in found["calibration"]
    assert "0.50" not in found["calibration"]  # the random model's row is not a finding
    assert found["per_class"] == (
        "The imbalance is where it fails: category: recall 0.26 [0.14, 0.38] for Composite "
        "(n = 50) against 0.96 [0.94, 0.97] for Metal (n = 600)."
    )


def test_the_label_and_fold_range_names_the_earlier_studys_probe_not_the_headline_one(tmp_path):
    rows = [
        {"probe": "logreg (raw features, C=10)", "labels": labels, "cv": cv, "seed": 0}
        | {"balanced_accuracy": mid, "balanced_accuracy_ci_low": mid - 0.05}
        | {"balanced_accuracy_ci_high": mid + 0.05}
        for labels, cv, mid in (("ours", "GroupKFold(5)", 0.66), ("all reflected", "KFold", 0.7))
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "clip_reference_gap.csv", index=False)
    sentence = index.reference_gap_finding(tmp_path).sentence
    assert sentence.startswith(
        "On the same features the earlier study's probe, logreg (raw features, C=10), ranges "
        "from balanced accuracy 0.66 [0.61, 0.71] (ours, GroupKFold(5)) to 0.70"
    )
    assert "2 label and fold variants, one fold seed each" in sentence


def test_the_weakest_class_says_when_its_interval_reaches_chance(tmp_path):
    real = {"weights": "pretrained", "kind": "clip_probe", "prompt_set": "logreg-grouped-cv"}
    rows = [
        real
        | {"task": "category", "class": cls, "n": n, "recall": mid, "chance_recall": 0.25}
        | {"recall_ci_low": low, "recall_ci_high": mid + 0.1}
        for cls, n, mid, low in (("Composite", 51, 0.25, 0.15), ("Metal or alloy", 680, 0.96, 0.94))
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "per_class.csv", index=False)
    sentence = index.per_class_finding(tmp_path).sentence
    assert "for Composite (n = 51, its interval reaching chance (0.25)) against" in sentence
    assert sentence.count("chance") == 1  # the strong class is far above it

    rows[0] |= {"recall_ci_low": 0.3, "recall": 0.4}  # clear of chance: nothing said
    pd.DataFrame(rows).to_csv(tmp_path / "per_class.csv", index=False)
    assert "chance" not in index.per_class_finding(tmp_path).sentence


def test_the_findings_figure_draws_chance_for_each_task():
    rows = pd.DataFrame(
        {
            "task": ["technique", "category"],
            "cv": ["grouped by specimen"] * 2,
            "features": ["reference ViT-B/32 (pretrained)"] * 2,
            "balanced_accuracy": [0.78, 0.55],
            "balanced_accuracy_ci_low": [0.72, 0.5],
            "balanced_accuracy_ci_high": [0.83, 0.61],
        }
    )
    fig = index.probe_figure(rows)
    [ax] = fig.axes
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert [tuple(line.get_xdata()) for line in dashed] == [(0.2, 0.2), (0.25, 0.25)]
    assert "chance (1 / classes)" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)


def test_the_calibration_finding_gives_the_change_with_its_own_interval(tmp_path):
    row = {"weights": "pretrained", "kind": "clip_probe", "prompt_set": "logreg-grouped-cv"}
    row |= {"task": "technique_coarse", "mean_confidence": 0.97, "accuracy": 0.93}
    for name, (mid, low, high) in {
        "ece_before": (0.03, 0.02, 0.05),
        "ece_after": (0.0065, 0.0071, 0.0286),  # a biased ECE: its interval above it
        "ece_change": (-0.0234, -0.036, 0.002),
    }.items():
        row |= {name: mid, f"{name}_ci_low": low, f"{name}_ci_high": high}
    pd.DataFrame([row]).to_csv(tmp_path / "calibration.csv", index=False)
    sentence = index.calibration_finding(tmp_path).sentence
    # the change at three decimals: whether its interval reaches zero must not round away
    assert "0.01 [0.01, 0.03] after (change -0.023 [-0.036, 0.002])" in sentence
