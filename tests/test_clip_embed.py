"""clip.embed and `python -m microqa embed`: the decoder CLIP shares with the VLMs, the
embedding cache (content-keyed, committed per batch, so a killed run resumes), bad images
skipped and listed, a corrupted cache moved aside and rebuilt, errors for people."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from microqa import clip
from microqa.clip import cache, embed, outputs
from microqa.data import images
from tests.clip_fixtures import (  # noqa: F401
    ARCH,
    random_b32_file,
    small_dataset,
    stage_dirs,
)
from tests.conftest import REPO


@pytest.fixture(scope="module")
def random_b32(random_b32_file):  # noqa: F811 (pytest fixture)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return clip.load_model(f"{ARCH}:{random_b32_file}", device="cpu")


def _run(args, env, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "microqa", "embed", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def _env(root: Path, **extra) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'lib'}{os.pathsep}{REPO}",
        "MICROQA_DATA": str(root / "data"),
        "MICROQA_BUILD": str(root / "build"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def _cached_rows(root: Path) -> int:
    path = root / "data" / "cache" / cache.CACHE_FILE
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=1) as db:
            return int(db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet, or locked for a moment
        return 0


def _counts(stdout: str) -> tuple[int, int]:
    """(embedded, from cache) from the CLI's summary line."""
    found = re.search(r"(\d+) embedded, (\d+) from cache", stdout)
    return int(found[1]), int(found[2])


# --------------------------------------------------------------------------- decoding


def test_sixteen_bit_images_are_stretched_as_the_vlms_see_them(tmp_path, random_b32):
    gradient = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))
    path = tmp_path / "000001.png"
    Image.fromarray(gradient).save(path)  # uint16 -> mode I;16
    _, pixels, reason = embed._ImageFiles([str(path)], random_b32.preprocess)[0]
    assert reason == ""
    assert torch.equal(pixels, random_b32.preprocess(images.open_rgb(path)))
    decoded = np.asarray(images.open_rgb(path))
    assert (decoded == 255).mean() < 0.05  # a clipping decoder turns ~99.6% of it white
    assert decoded.min() == 0 and decoded.max() == 255


# --------------------------------------------------------------------------- the cache


def test_cache_second_run_embeds_nothing_and_new_images_alone(random_b32, stage_dirs):  # noqa: F811
    small_dataset(stage_dirs / "ds", 5)
    paths = sorted((stage_dirs / "ds" / "images").iterdir())
    first = clip.embed_images(random_b32, paths[:3], batch_size=2, num_workers=1, progress=False)
    assert (first.n_computed, first.n_cached) == (3, 0)
    assert np.allclose(np.linalg.norm(first.embeddings, axis=1), 1, atol=1e-5)

    again = clip.embed_images(random_b32, paths[:3], batch_size=2, num_workers=1, progress=False)
    assert (again.n_computed, again.n_cached) == (0, 3)
    assert np.array_equal(again.embeddings, first.embeddings)

    more = clip.embed_images(random_b32, paths, batch_size=2, num_workers=1, progress=False)
    assert (more.n_computed, more.n_cached) == (len(paths) - 3, 3)
    assert np.array_equal(more.embeddings[:3], first.embeddings)
    # The batched, cached result equals a plain one-image forward pass (no mix-ups in batches).
    with torch.inference_mode():
        pixels = random_b32.preprocess(images.open_rgb(paths[4]))[None]
        direct = torch.nn.functional.normalize(random_b32.model.encode_image(pixels), dim=-1)[0]
    assert np.allclose(more.embeddings[4], direct.numpy(), atol=1e-4)

    # The key is the image content: a renamed copy is a cache hit; the same bytes under
    # another weights identity are not.
    renamed = stage_dirs / "copy.jpg"
    renamed.write_bytes(paths[0].read_bytes())
    assert clip.embed_images(random_b32, [renamed], num_workers=0, progress=False).n_cached == 1
    other = dataclasses.replace(
        random_b32, identity=dataclasses.replace(random_b32.identity, weights_id="sha256:other")
    )
    assert clip.embed_images(other, [renamed], num_workers=0, progress=False).n_computed == 1


def test_a_failing_run_keeps_every_finished_batch(random_b32, stage_dirs, monkeypatch):  # noqa: F811
    small_dataset(stage_dirs / "ds", 5)
    paths = sorted((stage_dirs / "ds" / "images").iterdir())
    calls = []
    forward = random_b32.model.encode_image

    def second_batch_fails(pixels):
        calls.append(len(pixels))
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return forward(pixels)

    monkeypatch.setattr(random_b32.model, "encode_image", second_batch_fails)
    with pytest.raises(RuntimeError, match="out of memory"):
        clip.embed_images(random_b32, paths, batch_size=2, num_workers=0, progress=False)
    monkeypatch.setattr(random_b32.model, "encode_image", forward)
    rerun = clip.embed_images(random_b32, paths, batch_size=2, num_workers=0, progress=False)
    assert (rerun.n_cached, rerun.n_computed) == (2, 3)  # the finished batch kept
    fresh = clip.embed_images(
        random_b32, paths, batch_size=2, num_workers=0, use_cache=False, progress=False
    )
    assert np.allclose(rerun.embeddings, fresh.embeddings, atol=1e-6)


def test_kill_minus_9_keeps_finished_batches_and_a_rerun_computes_only_the_rest(
    tmp_path,
    random_b32_file,  # noqa: F811
    random_b32,
):
    records = small_dataset(tmp_path / "ds", 8)
    model = f"{ARCH}:{random_b32_file}"
    args = ["--dataset", str(tmp_path / "ds"), "--model", model, "--batch-size", "2"]
    args += ["--workers", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "microqa", "embed", *args],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while _cached_rows(tmp_path) == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    kept = _cached_rows(tmp_path)
    assert 2 <= kept < len(records), kept  # at least one batch committed, not the whole run

    rerun = _run([*args, "--out", str(tmp_path / "resumed.npz")], _env(tmp_path))
    assert rerun.returncode == 0, rerun.stderr
    assert _counts(rerun.stdout) == (len(records) - kept, kept)  # finished batches not redone
    assert _cached_rows(tmp_path) == len(records)

    paths = sorted((tmp_path / "ds" / "images").iterdir())
    whole = clip.embed_images(
        random_b32, paths, batch_size=2, num_workers=0, use_cache=False, progress=False
    )
    with np.load(tmp_path / "resumed.npz") as resumed:
        assert resumed["micrograph_no"].tolist() == sorted(records["micrograph_no"].astype(int))
        # batch boundaries differ after the resume: equal up to float summation order
        assert np.allclose(resumed["embeddings"], whole.embeddings, atol=1e-5)


# --------------------------------------------------------------------------- bad input


def _hostile_dataset(folder: Path) -> dict[int, str]:
    """A small dataset whose first four images are broken in four ways; {id: reason part}."""
    records = small_dataset(folder, 6)
    numbers = records["micrograph_no"].astype(int).tolist()
    image = {n: next((folder / "images").glob(f"{n:06d}.*")) for n in numbers}
    image[numbers[0]].write_bytes(b"")
    data = image[numbers[1]].read_bytes()
    image[numbers[1]].write_bytes(data[: len(data) // 3])
    image[numbers[2]].write_text("micrograph_no,technique\n1,SEM\n", encoding="utf-8")
    image[numbers[3]].unlink()
    big = folder / "images" / f"{numbers[3]:06d}.png"
    Image.new("L", (700, 700), 128).save(big)
    return {
        numbers[0]: "empty file",
        numbers[1]: "cannot decode",
        numbers[2]: "cannot decode",
        numbers[3]: "over the limit",
    }


def test_bad_images_are_skipped_named_once_and_listed(tmp_path, random_b32_file):  # noqa: F811
    bad = _hostile_dataset(tmp_path / "ds")
    before = {p: p.read_bytes() for p in (tmp_path / "ds").rglob("*") if p.is_file()}
    model = f"{ARCH}:{random_b32_file}"
    args = ["--dataset", str(tmp_path / "ds"), "--model", model, "--model", model]
    result = _run(
        [*args, "--workers", "1", "--out", str(tmp_path / "emb.npz")],
        _env(tmp_path, MICROQA_MAX_PIXELS="300000"),
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    for number, reason in bad.items():
        (line,) = [x for x in result.stderr.splitlines() if x.startswith(f"failed: {number} ")]
        assert f"images/{number:06d}." in line and reason in line, line
        assert str(tmp_path) not in line  # named relative to the dataset
    failures = outputs.read_failures(tmp_path / "build" / "clip")
    assert list(failures.columns) == outputs.FAILURE_COLUMNS
    assert sorted(failures["micrograph_no"]) == sorted(bad)
    assert all(str(tmp_path) not in f for f in failures["image_file"])
    first = tmp_path / f"emb-{clip.slug(model)}.npz"
    with np.load(first) as data:  # every good image answered
        assert len(data["micrograph_no"]) == 6 - len(bad)
        assert not set(data["micrograph_no"].tolist()) & set(bad)
    assert {p: p.read_bytes() for p in before} == before  # the user's files untouched


def test_expected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    args = ["--dataset", str(tmp_path / "nowhere"), "--model", "ViT-B-32:openai"]
    result = _run(args, _env(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert "nowhere" in result.stderr
    debug = _run([*args, "--debug"], _env(tmp_path))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.parametrize("damage", ["garbage", "malformed"])
def test_a_corrupted_cache_is_moved_aside_and_rebuilt(random_b32, stage_dirs, capsys, damage):  # noqa: F811
    small_dataset(stage_dirs / "ds", 3)
    paths = sorted((stage_dirs / "ds" / "images").iterdir())
    clip.embed_images(random_b32, paths, batch_size=2, num_workers=0, progress=False)
    path = cache.cache_path()
    if damage == "garbage":
        path.write_bytes(b"this is not an SQLite database" * 100)
    else:  # keep the header, scramble the pages: "database disk image is malformed"
        data = bytearray(path.read_bytes())
        data[4096:] = bytes(range(256)) * ((len(data) - 4096) // 256) + b"\0" * (
            (len(data) - 4096) % 256
        )
        path.write_bytes(bytes(data))
    capsys.readouterr()
    again = clip.embed_images(random_b32, paths, batch_size=2, num_workers=0, progress=False)
    assert again.n_computed == len(paths)  # rebuilt, then filled again
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "cache" in x]
    assert str(path) in line and "moved it aside" in line
    assert len(list(path.parent.glob(f"{path.name}.corrupt-*"))) == 1
    assert clip.embed_images(random_b32, paths, num_workers=0, progress=False).n_cached == 3


def test_text_features_skip_the_padding_and_equal_the_towers_own():
    import open_clip

    from microqa.clip import prompts
    from microqa.data import taxonomy

    torch.manual_seed(0)
    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3}
    vision = {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16}
    model = open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    sets = [s for task in taxonomy.TASKS for s in prompts.prompt_sets(task, None).values()]
    texts = [p for s in sets for ps in s.values() for p in ps][:64] + ["a micrograph"]
    tokens = tokenizer(texts)
    assert int(tokens.argmax(dim=-1).max()) < 60  # the padding the short path skips
    calls = []
    model.transformer.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[1]))
    with torch.inference_mode():
        full = model.encode_text(tokens)
        short = embed.text_features(model, tokens)
    assert calls == [77, int(tokens.argmax(dim=-1).max()) + 1]
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-6)
    one = embed.text_features(model, tokens[-1:])  # a prompt alone: its own, shorter length
    torch.testing.assert_close(one, full[-1:], rtol=1e-5, atol=1e-6)
    # a tower without a causal mask sees every position: it runs as it is
    model.attn_mask = None
    with torch.inference_mode():
        assert embed.text_features(model, tokens).shape == full.shape
    assert calls[-1] == 77
