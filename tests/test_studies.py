"""The studies: quality and sensitivity benchmarks, evaluation, editing and concept pictures.

The scripts run as subprocesses (they set process-wide CPU options), at the smoke budget, into
temporary folders. One quality run is shared by the tests that need a trained checkpoint.
"""

import doctest
import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from examples.label_files import load_label_file
from examples.studies import segmenters
from examples.studies.budgets import BUDGETS, resolve_budget
from examples.studies.conditions import LabelCondition, apply_condition
from examples.studies.editing import object_regions, paste_labels, remove_labels, shift
from examples.studies.report import quality_claims, summarize
from examples.studies.runs import TABLE1, VARIANTS, run_config, train_and_measure
from examples.training.builders import restore_generator
from examples.training.config import DataConfig

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("fid", "kid_mean", "psnr", "ssim", "miou", "pixel_accuracy")


def script(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, env=env)
    return done


def ok(*args):
    done = script(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.fixture(scope="module")
def quality(tmp_path_factory):
    """The quality study at the smoke budget: every row of Table 1, trained, measured and reported."""
    base = tmp_path_factory.mktemp("quality")
    folders = {name: base / name for name in ("work", "cache", "results")}
    flags = [f"--{name}-dir" for name in folders]
    args = ["benchmarks/quality.py", "--budget", "smoke", "--no-progress"]
    for flag, folder in zip(flags, folders.values(), strict=True):
        args += [flag, folder]
    done = ok(*args)
    return {"args": args, "stdout": done.stdout, **folders}


def checkpoint_of(quality, row="asap-tlam-sparse"):
    return quality["work"] / "smoke" / row / "seed0" / "checkpoints" / "step_00000002.safetensors"


# ---------------------------------------------------------------- quality.py


def test_quality_writes_table_json_and_plot(quality):
    results = quality["results"]
    report = json.loads((results / "quality_smoke.json").read_text())
    assert [row["name"] for row in report["rows"]] == [v.name for v in TABLE1]
    for row in report["rows"]:
        (run,) = row["runs"]  # one seed at the smoke budget
        assert all(finite(run["final"][m]) for m in METRICS), row["name"]
        assert [point["step"] for point in row["curve"]] == [1, 2]  # FID measured over training
        assert run["final"]["sparsity"] == row["sparsity"]
    assert report["protocol"]["comparable_to_published"] is False
    assert "NOT comparable" in report["protocol"]["feature_extractor"]
    assert {"cpu", "torch", "python", "label_merge"} <= set(report["machine"])
    assert report["wall_seconds"] > 0 and report["train_seconds"] > 0
    table = (results / "quality_smoke.md").read_text()
    assert table.count("| ASAP |") == 6 and table.count("| SPADE |") == 2
    assert "## Claims" in table
    with Image.open(results / "quality_smoke_convergence.png") as image:
        assert image.size[0] > 200


def test_quality_resumes_without_training_again(quality):
    checkpoint = checkpoint_of(quality)
    before = checkpoint.stat().st_mtime_ns
    ok(*quality["args"])
    assert checkpoint.stat().st_mtime_ns == before


def test_quality_refuses_a_bad_budget():
    done = script("benchmarks/quality.py", "--budget", "huge")
    assert done.returncode != 0 and "--budget must be one of" in done.stderr


# ---------------------------------------------------------------- sensitivity.py


def test_sensitivity_trains_its_own_model_and_writes_both_figures(tmp_path):
    ok(
        "benchmarks/sensitivity.py",
        "--budget",
        "smoke",
        "--no-progress",
        "--sparsities",
        "0.1",
        "0.4",
        "0.7",
        "--work-dir",
        tmp_path / "work",
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        tmp_path / "results",
    )
    report = json.loads((tmp_path / "results" / "sensitivity_smoke.json").read_text())
    assert [p["sparsity"] for p in report["sparsity"]] == [0.1, 0.4, 0.7]
    assert [b["removed"] for b in report["removal"]] == [None, "semantic", "depth", "normal", "edge", "curvature"]
    for entry in report["sparsity"] + report["removal"]:
        assert finite(entry["fid"]["mean"])
    (model,) = report["models"]
    assert model["results"]["sparsity=0.5,without=edge"]["dropped_labels"] == ["edge"]
    assert (tmp_path / "work" / "smoke" / "asap-tlam-sparse" / "seed0" / "checkpoints").is_dir()
    for suffix in ("sparsity", "removal"):
        assert (tmp_path / "results" / f"sensitivity_smoke_{suffix}.png").is_file()


# ---------------------------------------------------------------- evaluate.py


def test_evaluate_writes_all_metrics(quality, tmp_path):
    out = tmp_path / "eval.json"
    ok(
        "examples/evaluate.py",
        checkpoint_of(quality),
        "--budget",
        "smoke",
        "--cache-dir",
        quality["cache"],
        "--num-samples",
        "6",
        "--sparsity",
        "0.5",
        "--drop-label",
        "edge",
        "--out",
        out,
        "--no-progress",
    )
    results = json.loads(out.read_text())
    assert all(finite(results[m]) for m in (*METRICS, "kid_std", "segmenter_on_real_miou"))
    assert results["num_samples"] == 6 and results["sparsity"] == 0.5 and results["dropped_labels"] == ["edge"]
    assert results["comparable_to_published"] is False and "SmallSegmenter" in results["feature_extractor"]
    assert results["segmenter_file"].startswith(str(quality["cache"]))


def test_evaluate_errors_name_the_problem(quality, tmp_path):
    done = script("examples/evaluate.py", checkpoint_of(quality), "--drop-label", "colour")
    assert done.returncode != 0 and "colour" in done.stderr and "semantic" in done.stderr
    done = script("examples/evaluate.py", tmp_path / "missing.safetensors")
    assert done.returncode != 0 and "missing.safetensors" in done.stderr
    done = script(
        "examples/evaluate.py",
        checkpoint_of(quality),
        "--fid-weights",
        tmp_path / "inception.pth",
        "--budget",
        "smoke",
        "--cache-dir",
        quality["cache"],
        "--num-samples",
        "2",
    )
    assert done.returncode != 0 and "inception.pth" in done.stderr and "pt_inception" in done.stderr


def test_segmenter_is_trained_once_then_reused(tmp_path, monkeypatch):
    data, recipe = DataConfig(resolution=16), BUDGETS["smoke"].segmenter
    net, path = segmenters.obtain_segmenter(data, recipe, cache_dir=tmp_path, progress=False)
    assert path.is_file() and path.parent == tmp_path / "segmenters"

    def refuse(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(segmenters, "train_segmenter", refuse)
    again, same = segmenters.obtain_segmenter(data, recipe, cache_dir=tmp_path, progress=False)
    assert same == path
    for a, b in zip(net.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = segmenters.cached_segmenter_path(tmp_path, DataConfig(resolution=32), recipe)
    assert other != path  # another image size is another segmenter


# ---------------------------------------------------------------- edit.py


def test_removal_makes_labels_missing_inside_the_mask_only(quality, tmp_path):
    out = tmp_path / "remove"
    ok("examples/edit.py", "remove", checkpoint_of(quality), "--index", "1", "--out", out)
    _, _, specs = restore_generator(checkpoint_of(quality))
    before_labels, before_masks = load_label_file(out / "labels_before.npz", specs)
    after_labels, after_masks = load_label_file(out / "labels_after.npz", specs)
    inside = torch.from_numpy(np.asarray(Image.open(out / "edit_mask.png")) > 0)
    assert inside.any() and (~inside).any()
    assert set(after_labels) == set(specs)
    for name in specs:
        assert not after_masks[name][inside].any(), name  # missing inside
        assert torch.equal(after_masks[name][~inside], before_masks[name][~inside]), name  # untouched outside
        assert torch.equal(after_labels[name][..., ~inside], before_labels[name][..., ~inside]), name
        assert not after_labels[name][..., inside].any(), name  # nothing of the object is left in the file
    record = json.loads((out / "edit.json").read_text())
    assert record["pixels"] == int(inside.sum())
    for name in ("before.png", "after.png", "comparison.png"):
        assert (out / name).is_file()


def test_insertion_pastes_the_source_object(quality, tmp_path):
    out = tmp_path / "insert"
    ok(
        "examples/edit.py",
        "insert",
        checkpoint_of(quality),
        "--index",
        "1",
        "--from-index",
        "2",
        "--offset",
        "1",
        "-2",
        "--out",
        out,
    )
    _, _, specs = restore_generator(checkpoint_of(quality))
    before_labels, before_masks = load_label_file(out / "labels_before.npz", specs)
    after_labels, after_masks = load_label_file(out / "labels_after.npz", specs)
    inside = torch.from_numpy(np.asarray(Image.open(out / "edit_mask.png")) > 0)
    assert inside.any()
    for name in specs:
        assert torch.equal(after_labels[name][..., ~inside], before_labels[name][..., ~inside]), name
        assert torch.equal(after_masks[name][~inside], before_masks[name][~inside]), name
    assert not torch.equal(after_labels["semantic"][inside], before_labels["semantic"][inside])
    done = script("examples/edit.py", "insert", checkpoint_of(quality), "--out", tmp_path / "x")
    assert done.returncode != 0 and "--from-index" in done.stderr


def test_editing_functions_on_random_scenes():
    g = torch.Generator().manual_seed(0)
    labels = {"semantic": torch.randint(0, 5, (6, 7), generator=g), "depth": torch.rand(1, 6, 7, generator=g)}
    masks = {"depth": torch.rand(6, 7, generator=g) > 0.3}
    source = {"semantic": torch.randint(5, 9, (6, 7), generator=g), "normal": torch.rand(3, 6, 7, generator=g)}
    thing = torch.zeros(6, 7, dtype=torch.bool)
    thing[1:3, 2:5] = True
    new, new_masks, where = paste_labels(labels, masks, source, {}, thing, offset=(2, -1))
    assert torch.equal(where, shift(thing, 2, -1, fill=False)) and int(where.sum()) == 6
    assert torch.equal(new["semantic"][where], source["semantic"][thing])  # the object, moved
    assert not new_masks["depth"][where].any()  # the source has no depth: missing on the object
    assert torch.equal(new_masks["normal"], where)  # only the source has normals: present on the object only
    assert torch.equal(new["depth"][:, ~where], labels["depth"][:, ~where])
    with pytest.raises(ValueError, match="leaves the 6x7 image"):
        paste_labels(labels, masks, source, {}, thing, offset=(6, 0))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        remove_labels(labels, masks, thing.float())
    assert object_regions(torch.tensor([[1, 1, 2]]), torch.tensor([[6, 6, 0]]), object_classes=[6]) == [(1, 2)]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), height=st.integers(1, 6), width=st.integers(1, 6))
def test_removal_property(seed, height, width):
    g = torch.Generator().manual_seed(seed)
    labels = {"a": torch.rand(2, height, width, generator=g), "b": torch.randint(0, 3, (height, width), generator=g)}
    masks = {"a": torch.rand(height, width, generator=g) > 0.5}
    hole = torch.rand(height, width, generator=g) > 0.5
    new, new_masks = remove_labels(labels, masks, hole)
    for name in labels:
        assert not new_masks[name][hole].any()
        assert torch.equal(new[name][..., ~hole], labels[name][..., ~hole])
    assert torch.equal(new_masks["a"][~hole], masks["a"][~hole]) and new_masks["b"][~hole].all()


# ---------------------------------------------------------------- visualize.py


def test_visualize_writes_the_figure_and_contributions(quality, tmp_path):
    out = tmp_path / "concept.png"
    ok("examples/visualize.py", checkpoint_of(quality), "--index", "0", "2", "--sparsity", "0.5", "--out", out)
    with Image.open(out) as image:
        assert image.size[0] > 400
    summary = json.loads(out.with_suffix(".json").read_text())
    assert len(summary["mean_contribution"]) == 2
    for shares in summary["mean_contribution"]:
        # Every pixel's contributions sum to 1 over its present labels, so their means do too.
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-4)
    out = tmp_path / "clam.png"
    done = ok("examples/visualize.py", checkpoint_of(quality, "asap-clam-dense"), "--out", out)
    assert out.is_file() and "no per-label contributions" in done.stdout


# ---------------------------------------------------------------- building blocks


def test_evaluation_masks_do_not_depend_on_the_batching():
    g = torch.Generator().manual_seed(1)
    labels = {"a": torch.rand(4, 1, 5, 5, generator=g), "b": torch.rand(4, 2, 5, 5, generator=g)}
    masks = {"a": torch.rand(4, 5, 5, generator=g) > 0.2}
    regions = torch.randint(0, 4, (4, 5, 5), generator=g)
    condition = LabelCondition(sparsity=0.5, seed=3, drop_labels=("b",))
    whole = apply_condition(masks, regions, condition, labels=labels, first_position=10)
    halves = [
        apply_condition(
            {"a": masks["a"][i : i + 2]},
            regions[i : i + 2],
            condition,
            labels={k: v[i : i + 2] for k, v in labels.items()},
            first_position=10 + i,
        )
        for i in (0, 2)
    ]
    assert torch.equal(whole["a"], torch.cat([h["a"] for h in halves]))
    assert not whole["b"].any()  # removed everywhere
    assert not (whole["a"] & ~masks["a"]).any()  # sparsity only removes
    for b in range(4):  # whole regions are kept or dropped
        for region in regions[b].unique():
            kept = whole["a"][b][(regions[b] == region) & masks["a"][b]]
            assert kept.all() or not kept.any()
    with pytest.raises(ValueError, match="cannot remove label"):
        apply_condition(masks, regions, LabelCondition(drop_labels=("c",)), labels=labels, first_position=0)
    with pytest.raises(ValueError, match="sparsity must be in"):
        LabelCondition(sparsity=1.5)


def test_budgets():
    assert BUDGETS["cpu-hour"].schedule() == [200, 400, 600, 800, 1000]
    custom = resolve_budget("30")
    assert (custom.steps, custom.schedule(), custom.seeds) == (30, [6, 12, 18, 24, 30], BUDGETS["cpu-hour"].seeds)
    paper = BUDGETS["paper"]
    assert (paper.model.dim, paper.model.depth, paper.model.heads, paper.resolution) == (96, 3, 3, 256)
    for bad in ("0", "fast"):
        with pytest.raises(ValueError, match="--budget"):
            resolve_budget(bad)


def test_claims_follow_the_numbers():
    def row(name, fids):
        return {"name": name, "summary": {"fid": summarize(fids)}}

    rows = [
        row("asap-tlam-dense", [10, 11]),
        row("asap-clam-dense", [20, 21]),
        row("asap-naive", [15, 30]),
        row("asap-semantic", [40, 41]),
    ]
    claims = {c["claim"]: c for c in quality_claims(rows)}
    order = claims["TLAM beats CLAM beats naive concatenation (dense, ASAP)"]
    assert order["holds"] and not order["beyond_seed_spread"]  # 20.5 < 22.5, but the naive seeds spread by 10.6
    assert claims["multi-conditioning (TLAM) beats semantics-only, ASAP"]["beyond_seed_spread"]
    assert claims["TLAM beats CLAM (dense, ASAP)"]["beyond_seed_spread"]
    assert not any("SPADE" in text for text in claims)  # rows not run are left out
    assert not quality_claims(rows[3:])  # semantics only: nothing to compare
    rows[1] = row("asap-clam-dense", [5, 6])
    assert not {c["claim"]: c for c in quality_claims(rows)}[order["claim"]]["holds"]


def test_measurements_of_another_protocol_are_refused(quality):
    variant = VARIANTS["asap-tlam-sparse"]
    config = run_config(variant, BUDGETS["smoke"], seed=0, out=checkpoint_of(quality).parent.parent)
    with pytest.raises(ValueError, match="another protocol"):
        train_and_measure(config, schedule=[1, 2], measure=lambda g: {}, protocol={"eval_set": "other"}, progress=False)


@pytest.mark.parametrize("module", ["environment", "conditions", "budgets", "segmenters", "report", "editing"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(f"examples.studies.{module}"))
    assert result.attempted > 0 and result.failed == 0
