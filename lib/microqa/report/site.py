"""The rendered report: the executed notebooks as one static HTML site (docs/).

Built with nbconvert's HTMLExporter ("lab" template: the same renderer Jupyter uses, pinned,
maintained, and needing no extra toolchain as Jupyter Book or Quarto would), with code cells
hidden, and a few preprocessing steps on each executed notebook before rendering:

- the provenance banner appears once, at the top of the page (the most complete one the
  notebook displayed; later copies and the "!!!" stderr banners are dropped);
- absolute paths of the machine that ran it (the repository, its parent, the temporary
  folder, the home folder) are rewritten to repo-relative ones or removed;
- widget outputs (tqdm bars) keep only their text form, which a static page can show;
- a navigation line links the index and the other notebooks.

`python -m microqa.report.site [--notebooks build/notebooks] [--out docs]` writes index.html and
one page per notebook, refusing notebooks that hold an error, and checks the 20 MB budget.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import sys
import tempfile
from pathlib import Path

import jinja2
import nbformat
from nbconvert import HTMLExporter

from microqa import config, publishing
from microqa.files import atomic_write_text
from microqa.run import Run

NOTEBOOKS = config.notebooks()
MAX_BYTES = 20 * 1024 * 1024
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


def prepare(nb: nbformat.NotebookNode, name: str, pairs) -> nbformat.NotebookNode:
    """The notebook as the page shows it (see the module docstring)."""
    banners = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                raise SiteError(f"{name}: a cell failed ({output.get('ename')}); rerun it")
            if output.get("output_type") == "stream" and "OFFLINE SUBSTITUTE in stage" in (
                output.get("text", "")
            ):
                continue  # the same message as the banner
            if _is_banner(output):
                banners.append(output["data"]["text/markdown"])
                continue
            data = output.get("data")
            if data and WIDGET_MIME in data:
                data.pop(WIDGET_MIME)
                if not data:
                    continue
            kept.append(_scrub_output(output, pairs))
        cell.outputs = kept
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = scrub(cell.source, pairs)
    banner = max(banners, key=lambda b: (b.count("\n- "), len(b)), default="")
    header = [nav_markdown(name)] + ([banner] if banner else [])
    first = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    nb.cells[first:first] = [nbformat.v4.new_markdown_cell(text) for text in header]
    return nb


def _scrub_output(output, pairs):
    if "text" in output:
        output["text"] = scrub(output["text"], pairs)
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/") or mime.endswith("json"):
            if isinstance(value, str):
                output["data"][mime] = scrub(value, pairs)
    return output


def nav_markdown(current: str) -> str:
    links = ["[index](index.html)"] + [
        f"**{n[:2]}**" if n == current else f"[{n[:2]}]({n}.html)" for n in NOTEBOOKS
    ]
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
TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def render(nb: nbformat.NotebookNode, title: str) -> str:
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


def index_page(entries: list[tuple[str, str]], banner_html: str) -> str:
    items = "\n".join(
        f'<li><a href="{name}.html">{html.escape(title)}</a></li>' for name, title in entries
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>microqa: the rendered study</title>
<style>body{{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;
line-height:1.5}} li{{margin:.4rem 0}}</style></head>
<body>
<h1>microqa: DoITPoMS micrographs with CLIP and vision-language models</h1>
<p>The executed notebooks of the study, rendered without their code (the code is in the
repository's <code>notebooks/</code> and <code>lib/microqa/</code>). Each page starts with the
provenance of its numbers.</p>
{banner_html}
<ol>
{items}
</ol>
</body></html>
"""


def build(notebooks_dir: Path, out_dir: Path) -> list[Path]:
    """Render every executed notebook found in `notebooks_dir` into `out_dir`; returns pages."""
    pairs = machine_paths()
    found = [n for n in NOTEBOOKS if (notebooks_dir / f"{n}.ipynb").is_file()]
    if not found:
        raise SiteError(f"no executed notebooks in {publishing.relative(notebooks_dir)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, pages, last_banner = [], [], ""
    for name in found:
        nb = nbformat.read(notebooks_dir / f"{name}.ipynb", as_version=4)
        title = title_of(nb, name)
        nb = prepare(nb, name, pairs)
        banner = [c.source for c in nb.cells[:3] if c.source.lstrip().startswith(BANNER_PREFIXES)]
        last_banner = banner[0] if banner else last_banner
        page = out_dir / f"{name}.html"
        _write_page(page, scrub(render(nb, title), pairs))
        entries.append((name, title))
        pages.append(page)
    index = out_dir / "index.html"
    banner_html = _markdown_html(last_banner) if last_banner else ""
    _write_page(index, scrub(index_page(entries, banner_html), pairs))
    pages.insert(0, index)
    total = sum(p.stat().st_size for p in pages)
    if total > MAX_BYTES:
        raise SiteError(f"the report is {total / 2**20:.1f} MB, over {MAX_BYTES / 2**20:.0f} MB")
    return pages


def _write_page(path: Path, text: str) -> None:
    atomic_write_text(path, text)
    path.chmod(0o644)  # a static host serves it to anyone


def _markdown_html(markdown: str) -> str:
    from nbconvert.filters.markdown import markdown2html_mistune

    return markdown2html_mistune(markdown)


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
    size = sum(p.stat().st_size for p in pages) / 2**20
    print(f"report: {len(pages)} pages, {size:.1f} MB in {publishing.relative(out)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
