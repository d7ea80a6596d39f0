"""`python -m microqa <command>`: the long-running stages and tools, for scripts and clusters.

Each command lives in the module that owns it; that module provides `configure_cli(parser)`
and `run_cli(args) -> int`. Modules are imported only when their command runs, so
`python -m microqa scrape` never loads torch.

Exit codes: 0 all good; 1 finished, but some items failed (each named on stderr); 2 bad input
or another expected error, printed as one line `error: ...` (`--debug` shows the traceback);
70 an unexpected error (a bug: its traceback is printed); 130 interrupted. The scraper adds
3: the site is unreachable.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

COMMANDS = {
    "scrape": ("microqa.data.doitpoms", "download the DoITPoMS micrograph library (resumable)"),
    "mirror": ("microqa.data.mirror", "serve a dataset folder as a local stand-in of the site"),
    "sample": ("microqa.data.sample", "build the embedded offline sample from a local mirror"),
    "embed": ("microqa.clip.cli", "embed a dataset's images with CLIP models (cached)"),
    "vlm": ("microqa.vlm.cli", "ask a VLM the study's questions about a dataset (cached)"),
}
DEBUG_FLAG = "--debug"
CRASHED = 70  # EX_SOFTWARE of sysexits.h


def expected_errors(module=None) -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix (bad input, a missing file, a refused substitute):
    one line, no traceback. Anything else is a bug and keeps its traceback. A command's module
    adds its own in `EXPECTED_ERRORS`."""
    from microqa import provenance, run
    from microqa.data import dataset, images, taxonomy

    found: list[type[BaseException]] = [
        dataset.DatasetError,
        images.ImageError,
        provenance.StrictModeError,
        run.RunError,
        taxonomy.UnmappedLabelError,
        OSError,
    ]
    if "microqa.data.doitpoms" in sys.modules:
        found.append(sys.modules["microqa.data.doitpoms"].ScrapeError)
    found.extend(getattr(module, "EXPECTED_ERRORS", ()))
    return tuple(found)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m microqa", description=__doc__.splitlines()[0])
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def one_line(error: BaseException) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else error
    return " ".join(str(text).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints help / usage errors
        return 2
    module_name, help_text = COMMANDS[argv[0]]
    module = None
    try:
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(prog=f"python -m microqa {argv[0]}", description=help_text)
        parser.add_argument(DEBUG_FLAG, action="store_true", help="show tracebacks of errors")
        module.configure_cli(parser)
        args = parser.parse_args(argv[1:])
        return int(module.run_cli(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted (work already saved is kept)", file=sys.stderr)
        return 130
    except Exception as error:
        expected = isinstance(error, expected_errors(module))
        if debug or not expected:
            traceback.print_exc()
        if not expected:
            print(f"error: {one_line(error)} (a bug: please report it)", file=sys.stderr)
            return CRASHED
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
