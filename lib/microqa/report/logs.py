"""A notebook's first call: library logs and third-party warnings go to a log file, not red
stderr noise in the notebook (and the rendered report).

`notebook_setup(run)` (with `run = Run.start("03_clip_zero_shot", ...)`) routes the root
logger, Python warnings (TqdmWarning, FutureWarning, ...), and the loggers of transformers /
huggingface_hub / open_clip (e.g. "Failed to download ...") to `build/logs/<notebook>.log`,
turns off the hub's and transformers' own model-loading bars (our tqdm bars stay: ipywidgets
draws them in a notebook), and applies the figure style; it returns the run, so a notebook's
first cell is one line (`run = logs.notebook_setup(Run.start(...))`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from microqa import config, publishing
from microqa.report import plots
from microqa.run import Run

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that install their own stderr handler instead of propagating to the root logger.
_OWN_HANDLER_LIBRARIES = ("transformers", "huggingface_hub")


def log_path(notebook: str) -> Path:
    return config.build_dir() / "logs" / f"{notebook}.log"


class OtherCheckoutError(RuntimeError):
    """A notebook of one checkout imported the library of another."""


def checkout_of(folder: Path) -> Path | None:
    """The microqa checkout `folder` lies in (the nearest parent holding lib/microqa), if any."""
    for candidate in (folder, *folder.parents):
        if (candidate / "lib" / "microqa" / "__init__.py").is_file():
            return candidate
    return None


def check_library_checkout(notebook_folder: Path | None = None) -> None:
    """Refuse to run a notebook of one checkout with the library of another (an editable
    install points at one checkout; a second clone's notebooks would silently run the first
    clone's code and publish into it)."""
    import microqa

    folder = Path(notebook_folder or Path.cwd()).resolve()
    notebook_checkout = checkout_of(folder)
    library_checkout = Path(microqa.__file__).resolve().parents[2]
    if notebook_checkout is not None and notebook_checkout != library_checkout:
        raise OtherCheckoutError(
            f"this notebook belongs to the checkout {notebook_checkout} but imports microqa from "
            f"{library_checkout}: run `make setup` (or `make lab`) in {notebook_checkout}"
        )


def notebook_setup(run: Run) -> Run:
    """Call once at the top of a notebook (after its parameters cell); returns `run`."""
    check_library_checkout()
    path = log_path(run.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    # force=True drops the stderr handler a library's bare logging.error() would install
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.captureWarnings(True)
    warnings.simplefilter("default")  # each distinct warning once, into the log
    _quiet_hub_libraries()
    plots.set_style()
    print(f"Library logs and warnings of this run: {publishing.relative(path)}")
    return run


def _quiet_hub_libraries() -> None:
    """transformers and huggingface_hub log to their own stderr handler and draw model-loading
    bars: route their logs through the root logger (so into the file) and drop those bars.
    Skipped quietly when they are not installed."""
    try:
        import huggingface_hub.utils as hub_utils
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    for name in _OWN_HANDLER_LIBRARIES:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler):
                logger.removeHandler(handler)
        logger.propagate = True
