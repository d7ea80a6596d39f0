"""The CLIP benchmark runs end to end on a few real micrographs and reports every figure."""

from __future__ import annotations

import json

import pytest

from tests.clip_fixtures import place_random_b32, random_b32_file  # noqa: F401
from tests.conftest import REPO, needs_mirror


@needs_mirror()
def test_bench_clip_reports_all_rates_and_ratios(tmp_path, monkeypatch, capsys, random_b32_file):  # noqa: E501, F811
    import importlib.util

    monkeypatch.setenv("MICROQA_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MICROQA_MODELS", str(tmp_path / "data" / "models"))
    place_random_b32(random_b32_file, tmp_path / "data")
    spec = importlib.util.spec_from_file_location("bench_clip", REPO / "bench" / "bench_clip.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    code = bench.main(
        [
            "--n",
            "6",
            "--batch",
            "3",
            "--device",
            "cpu",
            "--workers",
            "1",
            "--n-earlier",
            "3",
            "--largest",
            "3",
            "--repeats",
            "1",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    (result,) = json.loads(out.read_text())
    for key in ("earlier_study", "pipeline", "bare_forward", "decode_preprocess"):
        assert result[key] > 0, key
    assert result["pipeline_vs_bare"] == pytest.approx(result["pipeline"] / result["bare_forward"])
    decoding = result["decoding"]
    assert decoding["largest"] == 3
    for key in ("decode_today", "decode_reduced", "decode_margin1", "decode_cached"):
        assert decoding[key] > 0, key
    assert decoding["decode_speedup"] == pytest.approx(
        decoding["decode_reduced"] / decoding["decode_today"]
    )
    for key in ("ms_full_decode", "ms_decode_half", "ms_decode_quarter", "ms_pillow_resize_224"):
        assert decoding[key] > 0, key
    assert decoding["ms_today"] == pytest.approx(1000 / decoding["decode_today"])
    for key in ("worst_cosine", "worst_cosine_margin1"):
        assert -1 <= decoding[key] <= 1 + 1e-5, key
    printed = capsys.readouterr().out
    assert "(b)/(c)" in printed and "(b)/(a)" in printed and "worst cosine" in printed
