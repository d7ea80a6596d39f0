"""Source notebooks are stored without outputs, each with one `parameters` cell."""

from __future__ import annotations

import json

from tests.conftest import REPO


def test_source_notebooks_are_stored_without_outputs():
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    for path in notebooks:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for cell in cells:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs"), f"{path.name} has stored outputs"
                assert cell.get("execution_count") is None, f"{path.name} has execution counts"
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name} needs exactly one 'parameters' cell"


def test_a_notebook_saved_in_jupyterlab_leaves_git_clean():
    """What JupyterLab adds on save (outputs, execution counts, the full language_info and
    the kernel's display name) is exactly what the git filter of `make setup` strips."""
    import re
    import shlex
    import subprocess
    import sys

    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    args = shlex.split(re.search(r"^NBSTRIPOUT_ARGS := (.*)$", makefile, re.M).group(1))
    path = REPO / "notebooks" / "01_scrape_doitpoms.ipynb"
    stored = path.read_text(encoding="utf-8")
    saved = json.loads(stored)
    saved["metadata"]["kernelspec"]["display_name"] = "Python 3 (ipykernel)"
    saved["metadata"]["language_info"] = {
        "codemirror_mode": {"name": "ipython", "version": 3},
        "file_extension": ".py",
        "mimetype": "text/x-python",
        "name": "python",
        "nbconvert_exporter": "python",
        "pygments_lexer": "ipython3",
        "version": "3.11.7",
    }
    code = next(c for c in saved["cells"] if c["cell_type"] == "code")
    code["execution_count"] = 1
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hello\n"]}]
    lab_text = json.dumps(saved, indent=1, ensure_ascii=False) + "\n"
    assert lab_text != stored
    cleaned = subprocess.run(
        [sys.executable, "-m", "nbstripout", *args],
        input=lab_text,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert cleaned == stored
    import nbformat

    nbformat.validate(nbformat.reads(stored, as_version=4))  # papermill refuses invalid JSON
