"""Plant each wrong-number bug a reviewer found by hand, one at a time; the tests must catch it.

mutmut's generated mutants are small syntactic changes; these are the study-level mistakes
that once survived (issue: "Tests that cannot see a wrong number"): a choice made on the
images it is scored on, a paired test that compares a method with itself, an interval at the
wrong level, a probe scored on leaky folds, and so on. Each class is a source patch (exact
text, which must occur once) and the test files that should fail under it. The patch is
applied to a copy of lib/ (the working tree is never touched), the patched module must still
compile (a syntax error would be "caught" for the wrong reason), and the tests run against
the copy.

    .venv/bin/python tools/mutant_classes.py        (make mutation runs it after mutmut)
"""

from __future__ import annotations

import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bug:
    name: str
    module: str  # path under lib/
    patches: tuple[tuple[str, str], ...]  # (exact original text, replacement)
    tests: tuple[str, ...]


BUGS = (
    Bug(
        "cascade threshold chosen on the images it is scored on",
        "microqa/compare/comparison.py",
        (
            (
                "choose_threshold(cascade_curve(base, vlm, train))",
                "choose_threshold(cascade_curve(base, vlm, truth))",
            ),
        ),
        ("tests/test_comparison.py",),
    ),
    Bug(
        "fusion weight chosen on the images it is scored on",
        "microqa/compare/comparison.py",
        (("choose_fusion_weight(base, vlm, train)", "choose_fusion_weight(base, vlm, truth)"),),
        ("tests/test_comparison.py",),
    ),
    Bug(
        "fusion picks its worst weight",
        "microqa/compare/hybrids.py",
        (("FUSION_WEIGHTS[max(range(", "FUSION_WEIGHTS[min(range("),),
        ("tests/test_comparison.py",),
    ),
    Bug(
        "paired test computes method b from method a's answers",
        "microqa/stats.py",
        (
            (
                "codes_a, codes_b = metrics.LabelCodes(y, a), metrics.LabelCodes(y, b)",
                "codes_a, codes_b = metrics.LabelCodes(y, a), metrics.LabelCodes(y, a)",
            ),
        ),
        ("tests/test_stats.py",),
    ),
    Bug(
        "paired difference's sign flipped (b minus a)",
        "microqa/stats.py",
        (("fa(i) - fb(i)", "fb(i) - fa(i)"), ("fa(whole) - fb(whole)", "fb(whole) - fa(whole)")),
        ("tests/test_stats.py",),
    ),
    Bug(
        "a 90% interval labelled 95%",
        "microqa/stats.py",
        (("alpha = (1 - level) / 2", "alpha = (1 - 0.90) / 2"),),
        ("tests/test_stats.py",),
    ),
    Bug(
        "one-sided McNemar test",
        "microqa/metrics.py",
        (
            (
                "binomtest(only_a, discordant).pvalue",
                'binomtest(only_a, discordant, alternative="greater").pvalue',
            ),
        ),
        ("tests/test_metrics.py", "tests/test_stats.py"),
    ),
    Bug(
        "sign-flip test flips images, not whole specimens",
        "microqa/stats.py",
        (
            (
                "_, cluster = np.unique(groups, return_inverse=True)",
                "cluster = np.arange(len(y))",
            ),
        ),
        ("tests/test_stats.py",),
    ),
    Bug(
        "minimal detectable difference at the uncorrected level",
        "microqa/stats.py",
        (("corrected = alpha / max(m, 1)", "corrected = alpha"),),
        ("tests/test_stats.py",),
    ),
    Bug(
        "contributor-grouped probe rows resample specimens",
        "microqa/clip/probes.py",
        (
            (
                'clusters = groups if scheme == "contributor" else specimens',
                "clusters = specimens",
            ),
        ),
        ("tests/test_probes.py",),
    ),
    Bug(
        "balanced folds ignore the balance (each specimen its own hash fold)",
        "microqa/data/splits.py",
        (("chosen = own_fold if own_fold in lightest else lightest[0]", "chosen = own_fold"),),
        ("tests/test_splits.py",),
    ),
    Bug(
        "grouped and ungrouped CV labels swapped",
        "microqa/clip/probes.py",
        (
            ('"stratified (ungrouped)": "stratified",', '"stratified (ungrouped)": "grouped",'),
            ('"grouped by specimen": "grouped",', '"grouped by specimen": "stratified",'),
        ),
        ("tests/test_probes.py",),
    ),
    Bug(
        "probe scores feeding the comparison from ungrouped folds",
        "microqa/clip/probes.py",
        (
            (
                'x, y, groups, method=method, scheme="grouped", seed=seed, classes=classes',
                'x, y, groups, method=method, scheme="stratified", seed=seed, classes=classes',
            ),
        ),
        ("tests/test_probes.py",),
    ),
    Bug(
        "learning curve from ungrouped folds",
        "microqa/clip/probes.py",
        (
            (
                'splitter = make_splitter("grouped", y, groups, seed=seed)',
                'splitter = make_splitter("stratified", y, groups, seed=seed)',
            ),
        ),
        ("tests/test_probes.py",),
    ),
    Bug(
        "zero-shot ignores CLIP's logit scale",
        "microqa/clip/zero_shot.py",
        (
            (
                "logit_scale * np.asarray(image_embeddings, float)",
                "np.asarray(image_embeddings, float)",
            ),
        ),
        ("tests/test_clip_zero_shot.py",),
    ),
    Bug(
        "cascade confidence: top probability instead of the margin",
        "microqa/compare/hybrids.py",
        (
            (
                'values[:, -1] - values[:, -2] if how == "margin" else values[:, -1]',
                "values[:, -1]",
            ),
        ),
        ("tests/test_comparison.py",),
    ),
    Bug(
        "CLIP prompt set (and the VLM's CLIP context) chosen on the fold it is applied to",
        "microqa/clip/prompt_choice.py",
        (
            (
                "other = wide.index[(fold != held_out).to_numpy()]",
                "other = wide.index[(fold == held_out).to_numpy()]",
            ),
        ),
        ("tests/test_clip_zero_shot.py", "tests/test_vlm_context.py"),
    ),
    Bug(
        "abstention scored as wrong in the VLM headline",
        "microqa/vlm/report.py",
        (
            (
                'forced = stats.summarise(truth, group["choice"].tolist(), groups, **common)',
                'forced = stats.summarise(truth, group["prediction"].tolist(), groups, **common)',
            ),
        ),
        ("tests/test_vlm_report.py",),
    ),
    Bug(
        "a hybrid that sends nothing reported as a hybrid",
        "microqa/compare/comparison.py",
        (("if not as_part:  # a hybrid", "if True:  # a hybrid"),),
        ("tests/test_comparison.py",),
    ),
    Bug(
        "two disagreeing answer statements resolved to one of the letters",
        "microqa/vlm/parsing.py",
        (
            (
                "    if len(committed) > 1:\n        return None\n",
                "    if len(committed) > 1:\n        committed = {sorted(committed)[-1]}\n",
            ),
        ),
        ("tests/test_vlm_parsing.py",),
    ),
    Bug(
        "a taxonomy entry moves 8 records to the wrong family",
        "microqa/data/taxonomy.py",
        (
            (
                '"reflected light microscopy, polarised": (OPTICAL_REFLECTED, "polarised"),',
                '"reflected light microscopy, polarised": (OPTICAL_TRANSMITTED, "polarised"),',
            ),
        ),
        ("tests/test_taxonomy.py",),
    ),
)


def plant(bug: Bug, lib: Path) -> str:
    """Apply the bug to the copy `lib`; returns the original text to restore."""
    path = lib / bug.module
    original = path.read_text(encoding="utf-8")
    patched = original
    for old, new in bug.patches:
        if patched.count(old) != 1:
            raise SystemExit(
                f"{bug.name}: {old!r} occurs {patched.count(old)} times in lib/{bug.module} "
                "(the code moved: update tools/mutant_classes.py)"
            )
        patched = patched.replace(old, new)
    path.write_text(patched, encoding="utf-8")
    py_compile.compile(str(path), doraise=True)
    return original


def failing(tests: tuple[str, ...], lib: Path) -> bool:
    """True when `tests` fail against the code in `lib` (a copy of lib/)."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{lib}{os.pathsep}{REPO}",
        "MICROQA_ROOT": str(REPO),  # the copy lives outside the checkout: use the checkout's data
    }
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    command += ["-m", "not slow and not notebooks", *tests]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode not in (0, 1):  # 2+: interrupted, usage or collection error
        raise SystemExit(f"pytest exited {result.returncode} on {tests}\n{result.stdout[-2000:]}")
    return result.returncode == 1


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mutant-classes-") as tmp:
        lib = Path(tmp) / "lib"
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
        shutil.copytree(REPO / "lib", lib, ignore=ignore)
        every_test = tuple(sorted({t for bug in BUGS for t in bug.tests}))
        if failing(every_test, lib):
            raise SystemExit("the tests fail on the unpatched code: fix them first")
        results = []
        for bug in BUGS:
            original = plant(bug, lib)
            try:
                results.append((bug, failing(bug.tests, lib)))
            finally:
                (lib / bug.module).write_text(original, encoding="utf-8")
    for bug, ok in results:
        print(f"  {'caught  ' if ok else 'SURVIVED'}  {bug.name}  ({', '.join(bug.tests)})")
    n_caught = sum(ok for _, ok in results)
    print(f"hand-written bug classes caught: {n_caught}/{len(results)}")
    return 0 if n_caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
