"""`python -m microqa <command>`: the long-running stages, for scripts and clusters.

Each command lives in the module that owns its stage; that module provides
`configure_cli(parser)` and `run_cli(args) -> int`. Modules are imported only when their
command runs, so `python -m microqa scrape` never loads torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "scrape": ("microqa.doitpoms", "download the DoITPoMS micrograph library (resumable)"),
    "sample": ("microqa.dataset", "build the embedded offline sample from a local mirror"),
    "embed": ("microqa.clip", "embed a dataset's images with CLIP models (cached)"),
    "vlm": ("microqa.vlm.cli", "ask a VLM the study's questions about a dataset (cached)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m microqa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        module_name, help_text = COMMANDS[argv[0]]
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(prog=f"python -m microqa {argv[0]}", description=help_text)
        module.configure_cli(parser)
        args = parser.parse_args(argv[1:])
        return int(module.run_cli(args) or 0)
    build_parser().parse_args(argv)  # prints help / usage errors
    return 2
