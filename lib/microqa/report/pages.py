"""The report's written pages: `docs_src/<name>.md` (Markdown, committed) rendered into
`docs/<name>.html` beside the notebook pages, with the same stylesheet and navigation.

These pages hold what the README leaves out (methods and how far to trust each number, the
data and its labels, running the real study, more than one GPU, the Makefile, performance).
They are static prose: they point to the tables rather than quoting their numbers.

Links are written as they resolve from `docs_src/` on a code host: `other.md` (a page),
`../tables/x.md`, `../figures/y.png`, `../lib/...`. Rendered, a page link becomes
`other.html`, a table or figure link points at where this run wrote it (`site.resolve_links`;
else the published copy in the repository), and any other repository file is linked relative
to the output folder. A link that still does not resolve is an error of the site's check.

Rendered with mistune (already installed with nbconvert), tables included.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import mistune

from microqa import config
from microqa.files import atomic_write_text

# The order the pages are listed in; any other page of docs_src/ follows, alphabetically.
ORDER = ("methods", "data", "running", "real_study", "more_than_one_gpu", "performance")
STYLESHEET = "style.css"  # written by site.build
HREF_OR_SRC = re.compile(r'(href|src)="([^"]*)"')
ABSOLUTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//|#|/)")


class _Renderer(mistune.HTMLRenderer):
    """Headings get the ids a code host gives them, so `page.md#a-heading` works on both."""

    def heading(self, text: str, level: int, **attrs) -> str:
        plain = re.sub(r"<[^>]+>", "", text).lower()
        slug = re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", plain).strip())
        return f'<h{level} id="{slug}">{text}</h{level}>\n'


_markdown = mistune.create_markdown(
    escape=False, renderer=_Renderer(escape=False), plugins=["table", "strikethrough"]
)


def default_source() -> Path:
    return config.repo_root() / "docs_src"


def sources(source_dir: Path) -> list[Path]:
    """The pages of `source_dir` in reading order (ORDER first); none when it is absent."""
    if not source_dir.is_dir():
        return []
    found = {p.stem: p for p in source_dir.glob("*.md")}
    first = [found[name] for name in ORDER if name in found]
    return first + sorted(p for name, p in found.items() if name not in ORDER)


def title_of(text: str, fallback: str) -> str:
    match = re.search(r"^#{1,2}\s+(.+)$", text, flags=re.M)
    return match.group(1).strip() if match else fallback


def page_link(target: str, source_dir: Path, out_dir: Path, resolve) -> str:
    """Where a link written in `source_dir` points from a page in `out_dir`."""
    if ABSOLUTE.match(target):
        return target
    path_part, _, fragment = target.partition("#")
    fragment = f"#{fragment}" if fragment else ""
    path = Path(os.path.normpath(source_dir / path_part))
    if path.parent == Path(os.path.normpath(source_dir)) and path.suffix == ".md":
        return f"{path.stem}.html{fragment}"
    root = source_dir.parent
    try:
        inside = path.relative_to(os.path.normpath(root)).as_posix()
    except ValueError:
        return target  # outside the repository: left as written, the check reports it
    if inside.startswith(("tables/", "figures/")):
        resolved = resolve(inside, out_dir)
        if resolved != inside:
            return resolved + fragment
    if path.exists():  # the published copy, or any other file of the repository
        return Path(os.path.relpath(path, out_dir)).as_posix() + fragment
    return target


def render(text: str, title: str, nav_html: str) -> str:
    """One page: the Markdown's HTML in the notebook pages' frame, linking STYLESHEET."""
    body = _markdown(text)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{html.escape(title)}</title>
<link rel="stylesheet" href="{STYLESHEET}">
</head>
<body class="jp-Notebook" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
<main>
<div class="jp-Cell jp-MarkdownCell"><div class="jp-RenderedHTMLCommon jp-RenderedMarkdown \
jp-MarkdownOutput">
<p>{nav_html}</p>
{body}
</div></div>
</main>
</body></html>
"""


def build(source_dir: Path, out_dir: Path, nav, resolve_links) -> list[tuple[Path, str]]:
    """Render every page of `source_dir` into `out_dir`; returns (page, title) in order.
    `nav(name) -> str` gives the navigation line (Markdown) of the page `name`;
    `resolve_links(html, out_dir) -> html` is the site's pointing of tables/ and figures/."""

    def resolve(target: str, out_dir: Path) -> str:
        return HREF_OR_SRC.match(resolve_links(f'href="{target}"', out_dir)).group(2)

    written = []
    for source in sources(source_dir):
        text = source.read_text(encoding="utf-8")
        title = title_of(text, source.stem)
        nav_html = _markdown(nav(source.stem)).strip().removeprefix("<p>").removesuffix("</p>")
        page = render(text, title, nav_html)

        def fix(match: re.Match) -> str:
            attr, target = match.groups()
            new = page_link(html.unescape(target), source_dir, out_dir, resolve)
            return f'{attr}="{html.escape(new, quote=True)}"'

        path = out_dir / f"{source.stem}.html"
        atomic_write_text(path, HREF_OR_SRC.sub(fix, page))
        path.chmod(0o644)  # a static host serves it to anyone
        written.append((path, title))
    return written
