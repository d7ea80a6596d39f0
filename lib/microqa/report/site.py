"""The rendered report: the executed notebooks as one static HTML site (docs/).

Built with nbconvert's HTMLExporter ("lab" template: the same renderer Jupyter uses, pinned,
maintained, and needing no extra toolchain as Jupyter Book or Quarto would), with code cells
hidden, and a few preprocessing steps on each executed notebook before rendering:

- the provenance banner appears once, at the top of the page (the most complete one the
  notebook displayed; later copies and the "!!!" stderr banners are dropped);
- absolute paths of the machine that ran it (the repository, its parent, the temporary
  folder, the home folder) are rewritten to repo-relative ones or removed;
- widget outputs (tqdm bars) and the widgets' saved state are left out: a bar's text form
  is its first frame, which a static page would show frozen at 0%;
- stderr streams (warnings, "SKIPPED: ..." notes) and the "Library logs ..." pointer are left
  out: they stay in the executed notebooks and the logs, readers have neither;
- the loopback URL of a local DoITPoMS mirror is named as the public library it mirrors (the
  mirror itself is in the provenance record);
- figures become image files beside the pages (`img/`, at most IMAGE_PX wide; JPEG where
  photographic), with the alt text `plots.save_figure` gave them;
- a navigation line links the index and the other notebooks.

Every page links ONE stylesheet (`style.css`: nbconvert's lab CSS once, plus readable tables
and figures at page width) instead of 256 KB of CSS inlined per page. Relative links to
`tables/` and `figures/` are pointed at where the run wrote them; a link that still does not
resolve is an error, as is a page over MAX_PAGE_BYTES or a site over MAX_BYTES.

`python -m microqa.report.site [--notebooks build/notebooks] [--out docs]` writes index.html
(findings first: `report.index`), one page per notebook, refusing notebooks that hold an
error, and one page per Markdown source in docs_src/ (`report.pages`: methods, data, running
the real study, performance), linked from the index and the navigation line.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import re
import sys
import tempfile
from pathlib import Path

import jinja2
import nbformat
from nbconvert import HTMLExporter
from PIL import Image

from microqa import config, publishing
from microqa.data import doitpoms
from microqa.files import atomic_write_text
from microqa.report import index as findings_index
from microqa.report import pages as written_pages
from microqa.report import plots
from microqa.run import Run

NOTEBOOKS = config.notebooks()
MAX_BYTES = 6 * 1024 * 1024  # the whole site: pages, images, stylesheet
MAX_PAGE_BYTES = 1536 * 1024  # one page with its images
IMAGE_PX = 1440  # widest chart file; pages show figures at most plots.PAGE_PX wide
JPEG_QUALITY = 72  # galleries of micrographs: no visible loss at the width a page shows
STYLESHEET = "style.css"
ASSETS = "img"
LOG_POINTER = "Library logs and warnings of this run:"
BANNER_PREFIXES = ("## ⚠️ OFFLINE SUBSTITUTES", "**Provenance:**")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


class SiteError(RuntimeError):
    """A notebook the report cannot be built from; the message names it."""


def machine_paths() -> list[tuple[str, str]]:
    """(absolute prefix, replacement), longest first, for every path a page must not show."""
    root = config.repo_root().resolve()
    pairs = [
        (str(root) + "/", ""),
        (str(root), "."),
        (str(root.parent) + "/", "../"),
        (str(root.parent), ".."),
        (str(Path(tempfile.gettempdir()).resolve()) + "/", "$TMPDIR/"),
        (str(Path.home()) + "/", "~/"),
    ]
    for name in ("MICROQA_BUILD", "MICROQA_FIGURES", "MICROQA_TABLES", "MICROQA_DATA"):
        if os.environ.get(name):  # a run that moved its folders (tests, make smoke)
            moved = str(Path(os.environ[name]).resolve())
            pairs.append((moved, publishing.relative(moved)))
    pairs = [(a, b) for a, b in pairs if len(a) > 1]
    return sorted(set(pairs), key=lambda pair: -len(pair[0]))


def scrub(text: str, pairs: list[tuple[str, str]] | None = None) -> str:
    for prefix, replacement in pairs or machine_paths():
        text = text.replace(prefix, replacement)
    return text


def _is_banner(output) -> bool:
    markdown = output.get("data", {}).get("text/markdown", "")
    return isinstance(markdown, str) and markdown.lstrip().startswith(BANNER_PREFIXES)


def prepare(
    nb: nbformat.NotebookNode,
    name: str,
    pairs,
    pages: tuple[str, ...] | list[str] = NOTEBOOKS,
    guides: tuple[str, ...] = (),
) -> nbformat.NotebookNode:
    """The notebook as the page shows it (see the module docstring)."""
    banners = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                raise SiteError(f"{name}: a cell failed ({output.get('ename')}); rerun it")
            if output.get("output_type") == "stream":
                if output.get("name") == "stderr":
                    continue  # warnings and notes for whoever ran it: kept in the notebook
                output["text"] = _without_log_pointer(output.get("text", ""))
                if not output["text"].strip():
                    continue
            if _is_banner(output):
                banners.append(output["data"]["text/markdown"])
                continue
            if WIDGET_MIME in output.get("data", {}):
                continue  # a progress bar: its text form is its first frame
            kept.append(_scrub_output(output, pairs))
        cell.outputs = kept
    nb.metadata.pop("widgets", None)  # the bars' saved state, which nothing on the page reads
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = scrub(cell.source, pairs)
    banner = max(banners, key=lambda b: (b.count("\n- "), len(b)), default="")
    header = [nav_markdown(name, pages, guides)] + ([banner] if banner else [])
    first = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    nb.cells[first:first] = [  # fixed ids: a rebuilt page differs only where its content does
        nbformat.v4.new_markdown_cell(text, id=f"page-header-{k}") for k, text in enumerate(header)
    ]
    return nb


def _without_log_pointer(text: str) -> str:
    return "".join(
        line for line in text.splitlines(keepends=True) if not line.startswith(LOG_POINTER)
    )


def _scrub_output(output, pairs):
    if "text" in output:
        output["text"] = doitpoms.public_urls(scrub(output["text"], pairs))
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/") or mime.endswith("json"):
            if isinstance(value, str):
                output["data"][mime] = doitpoms.public_urls(scrub(value, pairs))
    return output


def extract_images(nb: nbformat.NotebookNode, name: str, out_dir: Path) -> list[Path]:
    """Write each PNG/JPEG output of `nb` to out_dir/img/<name>-<k>.<ext> (downscaled to at
    most IMAGE_PX wide; a photographic PNG becomes a JPEG) and point the output at the file."""
    folder = out_dir / ASSETS
    written = []
    k = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            mime = next((m for m in ("image/jpeg", "image/png") if m in data), None)
            if mime is None:
                continue
            k += 1
            image = Image.open(io.BytesIO(base64.b64decode(data[mime])))
            path, size = _write_image(image, folder / f"{name}-{k}", mime == "image/jpeg")
            new_mime = "image/jpeg" if path.suffix == ".jpg" else "image/png"
            alt = output.get("metadata", {}).get(mime, {}).get("alt", "")
            for m in ("image/jpeg", "image/png"):
                data.pop(m, None)
            data[new_mime] = ""  # the page links the file (see the template)
            meta = output.setdefault("metadata", {})
            meta["filenames"] = {new_mime: f"{ASSETS}/{path.name}"}
            meta[new_mime] = {"alt": alt or f"figure {k} of {name}", "width": size[0]}
            written.append(path)
    return written


def _write_image(image: Image.Image, stem: Path, photo: bool) -> tuple[Path, tuple[int, int]]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    image = image.convert("RGB")
    photo = photo or _is_photographic(image)
    # a chart keeps more pixels than it is shown at (thin lines and small text stay sharp);
    # a gallery of micrographs is shown at PAGE_PX and gains nothing from more
    widest = plots.PAGE_PX if photo else IMAGE_PX
    if image.width > widest:
        height = round(image.height * widest / image.width)
        image = image.resize((widest, height), Image.Resampling.LANCZOS)
    shown = (min(image.width, plots.PAGE_PX), None)
    shown = (shown[0], round(image.height * shown[0] / image.width))
    if photo:
        path = stem.with_suffix(".jpg")
        image.save(path, quality=JPEG_QUALITY, optimize=True, progressive=True)
    else:  # a chart: few colours, a palette PNG keeps it sharp and small
        path = stem.with_suffix(".png")
        image.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    path.chmod(0o644)
    return path, shown


def _is_photographic(image: Image.Image) -> bool:
    """Many distinct colours (micrographs in a chart): JPEG compresses it far better."""
    small = image.copy()
    small.thumbnail((400, 400))
    colours = small.getcolors(maxcolors=1 << 16)
    return colours is None or len(colours) > 3000


def nav_markdown(
    current: str, pages: tuple[str, ...] | list[str] = NOTEBOOKS, guides: tuple[str, ...] = ()
) -> str:
    """The navigation line: the index, the notebooks (by number), the written pages (by name)."""
    links = ["[index](index.html)"] + [
        f"**{n[:2]}**" if n == current else f"[{n[:2]}]({n}.html)" for n in pages
    ]
    links += [f"**{g}**" if g == current else f"[{g}]({g}.html)" for g in guides]
    return "Report: " + " · ".join(links)


def title_of(nb: nbformat.NotebookNode, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            match = re.search(r"^#\s+(.+)$", cell.source, flags=re.M)
            if match:
                return match.group(1).strip()
    return fallback


# nbconvert's lab page without the scripts it loads from a CDN (require.js, MathJax, mermaid,
# widgets): the notebooks use none of them, and a page then makes no third-party request.
# Figures link their file (extract_images) with their alt text, shown at most PAGE_PX wide.
TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% macro figure(output, mime) -%}
<div class="jp-RenderedImage jp-OutputArea-output">
<img src="{{ output.metadata.filenames[mime] | posix_path | escape_html }}"
 alt="{{ output.metadata[mime].alt | escape_html }}"
 style="width:{{ output.metadata[mime].width }}px">
</div>
{%- endmacro %}
{% block data_png scoped %}{{ figure(output, 'image/png') }}{% endblock data_png %}
{% block data_jpg scoped %}{{ figure(output, 'image/jpeg') }}{% endblock data_jpg %}
"""
# one <style> block in <head>: nbconvert inlines its CSS (about 256 KB) into every page
HEAD_STYLE = re.compile(r"<style[^>]*>.*?</style>\s*", flags=re.S)
SCOPED_STYLE = re.compile(r"<style scoped[^>]*>.*?</style>\s*", flags=re.S)  # pandas' per table


def render(nb: nbformat.NotebookNode, title: str) -> str:
    """The page's HTML with its inlined CSS still in it (see split_stylesheet)."""
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[jinja2.DictLoader({"microqa_report.html.j2": TEMPLATE})],
        template_file="microqa_report.html.j2",
    )
    exporter.exclude_input = True  # code hidden: notebooks are thin calls; the page is results
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    nb.metadata["title"] = title
    body, _ = exporter.from_notebook_node(nb)
    return body


def split_stylesheet(page: str) -> tuple[str, str]:
    """(the page linking STYLESHEET, the CSS its <head> inlined)."""
    head_end = page.index("</head>")
    head, rest = page[:head_end], page[head_end:]
    css = "\n".join(re.sub(r"^<style[^>]*>|</style>\s*$", "", m) for m in HEAD_STYLE.findall(head))
    link = f'<link rel="stylesheet" href="{STYLESHEET}">\n'
    return HEAD_STYLE.sub("", head) + link + SCOPED_STYLE.sub("", rest), css


# Readable tables and figures, after nbconvert's own CSS
READABLE_CSS = (
    """
main { max-width: PAGE_PXpx; margin: 0 auto; }
.jp-RenderedImage img { max-width: 100%; height: auto; }
.jp-RenderedHTMLCommon table { display: block; max-width: 100%; overflow-x: auto;
  font-size: 13px; border-collapse: collapse; }
.jp-RenderedHTMLCommon td, .jp-RenderedHTMLCommon th { white-space: normal;
  max-width: 22em; vertical-align: top; }
.jp-RenderedHTMLCommon tr > :first-child { position: sticky; left: 0; background: #fff;
  z-index: 1; }
.jp-RenderedHTMLCommon caption { caption-side: top; text-align: left; padding: .3em 0; }
"""
).replace("PAGE_PX", str(plots.PAGE_PX))


HREF_OR_SRC = re.compile(r'(href|src)="([^"#][^"]*)"')


def resolve_links(page: str, out_dir: Path) -> str:
    """Relative links to tables/ and figures/ written for the repository root, pointed at where
    this run wrote them (relative to the page); a written page's source (docs_src/NAME.md, as
    the README links it) at its rendered page NAME.html, which `check` then requires; other
    links are left as they are."""

    def fix(match: re.Match) -> str:
        attr, target = match.groups()
        if _external(target) or (out_dir / target).exists():
            return match.group(0)
        if target.startswith("docs_src/") and target.endswith(".md"):
            return f'{attr}="{Path(target).stem}.html"'
        for top, folder in (("tables/", config.tables_dir()), ("figures/", config.figures_dir())):
            for base in (out_dir.parent / top, folder):
                if target.startswith(top) and (base / target[len(top) :]).exists():
                    rel = os.path.relpath(base / target[len(top) :], out_dir)
                    return f'{attr}="{Path(rel).as_posix()}"'
        return match.group(0)

    return HREF_OR_SRC.sub(fix, page)


def broken_links(page: Path) -> list[str]:
    """Relative href/src targets of `page` that are no file next to it."""
    text = page.read_text(encoding="utf-8")
    targets = [t.split("#")[0] for _, t in HREF_OR_SRC.findall(text)]
    return [t for t in targets if t and not _external(t) and not (page.parent / t).exists()]


def _external(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", target)) or target.startswith("//")


def build(
    notebooks_dir: Path,
    out_dir: Path,
    tables_dir: Path | None = None,
    pages_dir: Path | None = None,
) -> list[Path]:
    """Render every executed notebook found in `notebooks_dir` into `out_dir`, with the index
    (findings from `tables_dir`, default: where this run's tables are) and the written pages
    of `pages_dir` (default: docs_src/, `report.pages`); returns the pages."""
    pairs = machine_paths()
    found = [n for n in NOTEBOOKS if (notebooks_dir / f"{n}.ipynb").is_file()]
    if not found:
        raise SiteError(f"no executed notebooks in {publishing.relative(notebooks_dir)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    source_dir = pages_dir or written_pages.default_source()
    guides = tuple(p.stem for p in written_pages.sources(source_dir))
    entries, pages, banners, css = [], [], [], ""
    images: dict[Path, list[Path]] = {}
    for name in found:
        nb = nbformat.read(notebooks_dir / f"{name}.ipynb", as_version=4)
        title = title_of(nb, name)
        nb = prepare(nb, name, pairs, found, guides)
        banners += [c.source for c in nb.cells[:3] if c.source.lstrip().startswith(BANNER_PREFIXES)]
        page = out_dir / f"{name}.html"
        images[page] = extract_images(nb, name, out_dir)
        text, css = split_stylesheet(doitpoms.public_urls(scrub(render(nb, title), pairs)))
        _write_page(page, resolve_links(text, out_dir))
        entries.append((name, title))
        pages.append(page)
    _write_page(out_dir / STYLESHEET, css + READABLE_CSS)
    written = written_pages.build(
        source_dir, out_dir, lambda g: nav_markdown(g, found, guides), resolve_links
    )
    pages += [page for page, _ in written]
    index = out_dir / "index.html"
    tables = tables_dir or config.tables_dir()
    about = [(page.stem, title) for page, title in written]
    text, images[index] = findings_index.page(entries, banners, tables, out_dir / ASSETS, about)
    _write_page(index, scrub(doitpoms.public_urls(text), pairs))
    pages.insert(0, index)
    check(pages, images, out_dir)
    return pages


def check(pages: list[Path], images: dict[Path, list[Path]], out_dir: Path) -> None:
    """Every relative link resolves; no page (with its images) over MAX_PAGE_BYTES; the site
    (pages, images, stylesheet) within MAX_BYTES."""
    for page in pages:
        broken = broken_links(page)
        if broken:
            raise SiteError(f"{page.name} links what does not exist: {', '.join(broken[:5])}")
        size = page.stat().st_size + sum(p.stat().st_size for p in images.get(page, []))
        if size > MAX_PAGE_BYTES:
            raise SiteError(f"{page.name} is {size / 2**20:.1f} MB with its images, over 1.5 MB")
    total = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    if total > MAX_BYTES:
        raise SiteError(f"the report is {total / 2**20:.1f} MB, over {MAX_BYTES / 2**20:.0f} MB")


def _write_page(path: Path, text: str) -> None:
    atomic_write_text(path, text)
    path.chmod(0o644)  # a static host serves it to anyone


def default_out(notebooks_dir: Path) -> Path:
    """docs/ for a publishing run (the run's destination, with the profile the notebooks were
    executed with); any other run's report goes to its own folder under build/runs/."""
    profiles = set()
    for name in NOTEBOOKS:
        path = notebooks_dir / f"{name}.ipynb"
        if path.is_file():
            nb = nbformat.read(path, as_version=4)
            params = nb.metadata.get("papermill", {}).get("parameters", {})
            profiles.add(params.get("profile", "full"))
    target = Run.start("site", "full" if profiles <= {"full"} else "smoke").destination
    if target.published:
        return config.repo_root() / "docs"
    return config.build_dir() / "runs" / target.run_name / "docs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m microqa.report.site", description=__doc__)
    parser.add_argument("--notebooks", default=str(config.build_dir() / "notebooks"))
    parser.add_argument("--out", default=None, help="default: docs/ for a publishing run")
    args = parser.parse_args(argv)
    notebooks_dir = Path(args.notebooks)
    out = Path(args.out) if args.out else default_out(notebooks_dir)
    try:
        pages = build(notebooks_dir, out)
    except (SiteError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    print(f"report: {len(pages)} pages, {size:.1f} MB in {publishing.relative(out)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
