"""The studies: quality and sensitivity benchmarks, evaluation, editing and concept pictures.

The scripts run as subprocesses (they set process-wide CPU options), at the smoke budget, into
temporary folders. One quality run is shared by the tests that need a trained checkpoint.
"""

import doctest
import importlib
import importlib.util
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
from examples.metrics import FeatureExtractor
from examples.studies import segmenters
from examples.studies.budgets import BUDGETS, resolve_budget
from examples.studies.conditions import LabelCondition, apply_condition
from examples.studies.editing import object_regions, paste_labels, remove_labels, shift
from examples.studies.report import averaged, quality_claims, quality_rows
from examples.studies.runs import LADDER, TABLE1, VARIANTS, run_config, train_and_measure
from examples.studies.scoring import BUILTIN_SCENE_METRICS, Scorer, evaluate_generator
from examples.studies.statistics import UNDECIDED, bootstrap_mean, compare, verdict
from examples.training.builders import restore_generator
from examples.training.config import DataConfig

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("fid", "kid_mean", "psnr", "ssim", "miou", "pixel_accuracy", "l1", "feature_distance")
EVAL_SAMPLES = BUDGETS["smoke"].eval_samples


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
    assert report["averaged_steps"] == [1, 2]  # the mean of the last checkpoints, never one
    for row in report["rows"]:
        (run,) = row["runs"]  # one seed at the smoke budget
        assert all(finite(run["averaged"]["set"][m]) for m in METRICS), row["name"]
        scenes = run["averaged"]["per_scene"]
        assert set(BUILTIN_SCENE_METRICS) <= set(scenes)
        assert all(len(values) == EVAL_SAMPLES for values in scenes.values())
        assert [point["step"] for point in row["curve"]] == [1, 2]  # FID measured over training
        first, second = (run["evaluations"][step] for step in ("1", "2"))
        assert run["averaged"]["set"]["fid"] == pytest.approx((first["fid"] + second["fid"]) / 2)
        assert first["sparsity"] == row["sparsity"]
        assert first["kid_subset_size"] == EVAL_SAMPLES // 2  # KID subsets smaller than the set
        assert row["summary"]["psnr"]["low"] <= row["summary"]["psnr"]["mean"] <= row["summary"]["psnr"]["high"]
    assert finite(report["floor"]["fid"]) and report["floor"]["num_samples"] == EVAL_SAMPLES
    assert "seed=1000004" in report["floor"]["other_set"]  # other scenes than the evaluation set's
    assert report["protocol"]["comparable_to_published"] is False
    assert "NOT comparable" in report["protocol"]["feature_extractor"]
    assert {"cpu", "torch", "python", "label_merge"} <= set(report["machine"])
    assert report["wall_seconds"] > 0 and report["train_seconds"] > 0
    config = json.loads(
        (quality["work"] / "smoke" / "asap-tlam-dense" / "seed0" / "study_evaluations.json").read_text()
    )
    assert config["config"]["optim"]["lambda_l1"] == BUDGETS["smoke"].lambda_l1 > 0  # the reconstruction term
    claims = {claim["claim"]: claim for claim in report["claims"]}
    checks = {c["metric"]: c for c in claims["TLAM beats CLAM (dense, ASAP)"]["checks"]}
    assert {"fid", "feature_distance", "psnr", "segmentation_accuracy"} <= set(checks)
    assert all(c["verdict"] == UNDECIDED for c in checks.values())  # one seed decides nothing
    table = (results / "quality_smoke.md").read_text()
    assert table.count("| ASAP |") == 6 and table.count("| SPADE |") == 2
    assert "real vs real (floor)" in table and "## Claims" in table and "TLAM beats CLAM (dense, ASAP)" in table
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


# ---------------------------------------------------------------- quality_ladder.py


def ladder_args(quality, *extra):
    args = ["benchmarks/quality_ladder.py", "--budget", "smoke", "--no-progress"]
    for name in ("work", "cache", "results"):
        args += [f"--{name}-dir", quality[name]]
    return [*args, *extra]


def test_ladder_trains_its_rungs_and_reads_table1_rows_from_the_quality_study(quality):
    ok(*ladder_args(quality))
    report = json.loads((quality["results"] / "quality_ladder_smoke.json").read_text())
    names = [row["name"] for row in report["rows"]]
    assert names == [v.name for v in LADDER] + ["asap-naive", "asap-tlam-dense", "asap-tlam-sparse"]
    assert report["reference_rows"]["source"].startswith("read from quality_smoke.json")
    table1 = json.loads((quality["results"] / "quality_smoke.json").read_text())
    assert report["rows"][-1] == next(row for row in table1["rows"] if row["name"] == "asap-tlam-sparse")
    # each rung's configuration is what its name says
    saved = {
        name: json.loads((quality["work"] / "smoke" / name / "seed0" / "study_evaluations.json").read_text())["config"]
        for name in ("asap-naive-raw", "asap-naive-norm-sparse", "asap-tlam-raw-dense")
    }
    assert (
        saved["asap-naive-raw"]["model"]["normalize_labels"],
        saved["asap-naive-raw"]["model"]["naive_presence"],
    ) == (
        False,
        False,
    )
    assert saved["asap-naive-norm-sparse"]["model"]["normalize_labels"] is True
    assert saved["asap-naive-norm-sparse"]["model"]["naive_presence"] is False
    assert saved["asap-naive-norm-sparse"]["train"]["sparsity"] == 0.5
    assert saved["asap-tlam-raw-dense"]["model"]["normalize_labels"] is False
    claims = {claim["claim"]: claim for claim in report["claims"]}
    assert len(claims) == 24
    assert (
        claims["TLAM beats the paper's naive (50% sparse)"]["a"],
        claims["TLAM beats the paper's naive (50% sparse)"]["b"],
    ) == (
        "asap-tlam-sparse",
        "asap-naive-raw-sparse",
    )
    text = (quality["results"] / "quality_ladder_smoke.md").read_text()
    assert "the baseline ladder" in text and "Naive (paper: raw, no presence)" in text
    with Image.open(quality["results"] / "quality_ladder_smoke.png") as image:
        assert image.size[0] > 200
    # --report trains nothing and names a row that is not measured for every seed
    records = quality["work"] / "smoke" / "asap-tlam-w32-dense" / "seed0" / "study_evaluations.json"
    checkpoint = checkpoint_of(quality, "asap-naive-raw")
    before = checkpoint.stat().st_mtime_ns
    records.rename(records.with_suffix(".aside"))
    try:
        ok(*ladder_args(quality, "--report"))
    finally:
        records.with_suffix(".aside").rename(records)
    assert checkpoint.stat().st_mtime_ns == before
    partial = json.loads((quality["results"] / "quality_ladder_smoke.json").read_text())
    assert partial["not_run"] == ["asap-tlam-w32-dense"]
    assert [row["name"] for row in partial["rows"]] == [name for name in names if name != "asap-tlam-w32-dense"]
    assert (
        "Not run (no claims about them): asap-tlam-w32-dense"
        in (quality["results"] / "quality_ladder_smoke.md").read_text()
    )


def test_ladder_report_with_nothing_measured_says_so(quality, tmp_path):
    args = ladder_args(quality, "--report", "--train-reference")
    args[args.index("--work-dir") + 1] = tmp_path / "empty"
    done = script(*args)
    assert done.returncode != 0 and "no row is measured for every seed" in done.stderr


def test_ladder_refuses_table1_rows_measured_otherwise(quality, tmp_path):
    report = json.loads((quality["results"] / "quality_smoke.json").read_text())
    report["protocol"]["segmenter"] = "another segmenter"
    reference = tmp_path / "other.json"
    reference.write_text(json.dumps(report))
    done = script(*ladder_args(quality, "--reference", reference))
    assert done.returncode != 0
    assert "another protocol (differences in ['segmenter'])" in done.stderr and "--train-reference" in done.stderr


def test_mergers_are_compared_on_every_missing_label_condition(quality):
    args = ["benchmarks/sensitivity_mergers.py", "--budget", "smoke", "--no-progress", "--sparsities", "0", "0.5"]
    for name in ("work", "cache", "results"):
        args += [f"--{name}-dir", quality[name]]
    ok(*args)
    results = quality["results"]
    report = json.loads((results / "sensitivity_mergers_smoke.json").read_text())
    assert (report["reference"], report["variants"]) == ("asap-tlam-sparse", ["asap-tlam-sparse", "asap-naive-sparse"])
    conditions = report["comparisons"]["asap-naive-sparse"]["conditions"]
    assert set(conditions) == {"sparsity=0", "sparsity=0.5"} | {f"sparsity=0,without={n}" for n in report["labels"]}
    metrics = {check["metric"] for check in conditions["sparsity=0,without=depth"]}
    assert {"fid", "miou", "depth.missing.abs_rel", "semantic.given.pixel_accuracy"} <= metrics
    assert "depth.missing.abs_rel" not in {check["metric"] for check in conditions["sparsity=0"]}  # none missing
    for variant in report["variants"]:  # each merger's own sensitivity report beside the comparison
        own = json.loads((results / f"sensitivity_mergers_smoke_{variant}.json").read_text())
        assert own["variant"] == variant and own["models"][0]["name"] == f"{variant}/seed0"
    assert "## asap-tlam-sparse − asap-naive-sparse" in (results / "sensitivity_mergers_smoke.md").read_text()
    with Image.open(results / "sensitivity_mergers_smoke.png") as image:
        assert image.size[0] > 400
    # --name: another comparison of the same runs, under its own name; the per-merger reports are shared
    ok(*args, "--variants", "asap-naive-sparse", "asap-tlam-sparse", "--name", "mergers_the_other_way")
    other = json.loads((results / "mergers_the_other_way.json").read_text())
    assert other["reference"] == "asap-naive-sparse" and list(other["comparisons"]) == ["asap-tlam-sparse"]
    assert json.loads((results / "sensitivity_mergers_smoke.json").read_text()) == report  # left as it was


# ---------------------------------------------------------------- sensitivity.py


def test_sensitivity_trains_its_own_model_and_writes_both_figures(tmp_path):
    ok(
        "benchmarks/sensitivity.py",
        "--budget",
        "smoke",
        "--no-progress",
        "--sparsities",
        "0",
        "0.4",
        "--removal-sparsity",
        "0.4",
        "--work-dir",
        tmp_path / "work",
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        tmp_path / "results",
    )
    report = json.loads((tmp_path / "results" / "sensitivity_smoke.json").read_text())
    assert [p["sparsity"] for p in report["sparsity"]] == [0.0, 0.4]
    labels = ["semantic", "depth", "normal", "edge", "curvature"]
    assert [b["removed"] for b in report["removal"]] == [None, *labels]
    for entry in report["sparsity"] + report["removal"]:
        assert finite(entry["summary"]["fid"]["mean"]) and finite(entry["summary"]["feature_distance"]["mean"])
    (model,) = report["models"]
    assert model["steps"] == [1, 2]  # measured at the checkpoints the quality study averages over
    assert len(model["averaged"]["sparsity=0.4,without=edge"]["per_scene"]["psnr"]) == EVAL_SAMPLES
    cache = json.loads(
        (tmp_path / "work" / "smoke" / "asap-tlam-sparse" / "seed0" / "study_sensitivity.json").read_text()
    )
    (last, *_) = [c for c in cache["checkpoints"] if c.endswith("step_00000002.safetensors")]
    assert cache["checkpoints"][last]["results"]["sparsity=0.4,without=edge"]["dropped_labels"] == ["edge"]
    assert [c["b"] for c in report["sparsity_claims"]] == ["sparsity=0.4"]
    assert [c["b"] for c in report["removal_claims"]] == [f"sparsity=0.4,without={name}" for name in labels]
    # The controllability scorer's metrics, per removed label: that label's own consistency.
    assert list(report["own_label_metrics"]) == labels
    for name, checks in report["own_label_metrics"].items():
        assert checks and all(check["metric"].startswith(f"{name}.") for check in checks)
        assert all(check["difference"] is not None for check in checks)  # no empty comparisons
    assert "## Comparisons" in (tmp_path / "results" / "sensitivity_smoke.md").read_text()
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
    assert BUDGETS["cpu-2h"].schedule() == [200, 400, 600, 800, 1000]
    assert BUDGETS["cpu-2h"].averaged_steps() == [600, 800, 1000]
    for name in ("cpu-hour", "cpu-2h"):
        assert len(BUDGETS[name].seeds) >= 5 and BUDGETS[name].lambda_l1 > 0
    assert BUDGETS["smoke"].seeds == (0,)
    custom = resolve_budget("30")
    assert (custom.name, custom.steps, custom.schedule()) == ("cpu-2h-30", 30, [6, 12, 18, 24, 30])
    assert custom.seeds == BUDGETS["cpu-2h"].seeds and custom.averaged_steps() == [18, 24, 30]
    paper = BUDGETS["paper"]
    assert (paper.model.dim, paper.model.depth, paper.model.heads, paper.resolution) == (96, 3, 3, 256)
    for bad in ("0", "fast"):
        with pytest.raises(ValueError, match="--budget"):
            resolve_budget(bad)


def _synthetic_rows(rng, shifts: dict[str, float], seeds=5, scenes=40):
    """Rows measured on shared scenes: per-scene PSNR = scene difficulty + row shift + seed + noise."""
    difficulty = rng.normal(size=scenes) * 2  # shared by every row: the scenes are the same
    variants = [VARIANTS[name] for name in shifts]
    runs = {}
    for name, offset in shifts.items():
        runs[name] = {}
        for seed in range(seeds):
            psnr = difficulty + offset + 0.2 * rng.normal() + 0.3 * rng.normal(size=scenes)
            evaluations = {
                str(step): {"fid": 1.0 - offset + 0.05 * rng.normal(), "per_scene": {"psnr": psnr.tolist()}}
                for step in (1, 2)
            }
            runs[name][seed] = {"train_seconds": 1.0, "evaluations": evaluations}
    return quality_rows(variants, runs, averaged_steps=[1, 2])


def test_claims_follow_the_numbers():
    rng = np.random.default_rng(0)
    rows = _synthetic_rows(rng, {"asap-tlam-dense": 1.0, "asap-clam-dense": 0.0, "asap-naive": 0.0})
    claims = {c["claim"]: {check["metric"]: check for check in c["checks"]} for c in quality_claims(rows)}
    assert set(claims) == {
        "TLAM beats CLAM (dense, ASAP)",
        "CLAM beats naive concatenation (dense, ASAP)",
        "TLAM beats naive concatenation (dense, ASAP)",
    }  # rows not run are left out
    tlam_clam = claims["TLAM beats CLAM (dense, ASAP)"]
    assert tlam_clam["psnr"]["verdict"] == "holds" and tlam_clam["psnr"]["low"] > 0
    # the rows ran the same seeds, so they are compared seed-paired, with a test over seeds
    assert tlam_clam["psnr"]["test"] == "paired t over seeds" and tlam_clam["psnr"]["p_value"] < 0.01
    assert tlam_clam["fid"]["verdict"] == "holds" and tlam_clam["fid"]["test"] == "paired t over seeds"
    assert claims["CLAM beats naive concatenation (dense, ASAP)"]["psnr"]["verdict"] == UNDECIDED
    reversed_rows = _synthetic_rows(rng, {"asap-tlam-dense": 0.0, "asap-clam-dense": 1.0})
    (claim,) = quality_claims(reversed_rows)
    assert {check["metric"]: check["verdict"] for check in claim["checks"]} == {"fid": "reversed", "psnr": "reversed"}


def test_averaged_is_the_mean_of_the_checkpoints():
    first = {"fid": 1.0, "seconds": 2.0, "per_scene": {"psnr": [10.0, 20.0], "x": [1.0, float("nan")]}}
    second = {"fid": 2.0, "seconds": 4.0, "per_scene": {"psnr": [12.0, 22.0], "x": [3.0, 5.0]}}
    result = averaged([first, second])
    assert result["set"]["fid"] == 1.5 and result["per_scene"]["psnr"] == [11.0, 21.0]
    assert result["per_scene"]["x"][0] == 2.0 and math.isnan(result["per_scene"]["x"][1])
    with pytest.raises(ValueError, match="nothing to average"):
        averaged([])


# ---------------------------------------------------------------- statistics


def _paired_rows(rng, shift, seeds=5, scenes=60):
    difficulty = rng.normal(size=scenes) * 2  # shared: both rows see the same scenes
    a = difficulty + shift + 0.3 * rng.normal(size=(seeds, 1)) + 0.5 * rng.normal(size=(seeds, scenes))
    b = difficulty + 0.3 * rng.normal(size=(seeds, 1)) + 0.5 * rng.normal(size=(seeds, scenes))
    return a, b


def test_a_clear_difference_is_decided_in_its_direction():
    rng = np.random.default_rng(1)
    a, b = _paired_rows(rng, shift=2.0)
    result = compare(a, b, resamples=1000)
    assert result.low > 0 and result.p_value < 1e-3 and result.scenes == 60
    assert result.test == "welch t over seeds"
    assert verdict(result, higher_is_better=True) == "holds"
    assert verdict(result, higher_is_better=False) == "reversed"
    assert verdict(result, higher_is_better=None) == "A higher"
    assert verdict(compare(a[:1], b[:1], resamples=1000), higher_is_better=True) == UNDECIDED  # one seed


def test_identical_rows_are_mostly_undecided_and_intervals_cover_the_truth():
    undecided = covered = 0
    trials = 40
    for trial in range(trials):
        rng = np.random.default_rng(100 + trial)
        a, b = _paired_rows(rng, shift=0.0)
        null = compare(a, b, resamples=1000, seed=trial)
        undecided += verdict(null, higher_is_better=True) == UNDECIDED
        shifted = compare(*_paired_rows(rng, shift=0.7), resamples=1000, seed=trial)
        covered += shifted.low <= 0.7 <= shifted.high
    # About 90% each (the percentile bootstrap over five seeds is a little narrow).
    assert undecided >= 0.75 * trials
    assert covered >= 0.75 * trials


def test_pairing_scenes_is_what_makes_small_differences_visible():
    rng = np.random.default_rng(2)
    difficulty = rng.normal(size=60) * 2  # shared: both rows see the same scenes
    seed_effect = 0.3 * rng.normal(size=(5, 1))  # shared: seed i of both rows saw the same batches
    a = difficulty + seed_effect + 0.3 + 0.5 * rng.normal(size=(5, 60))
    b = difficulty + seed_effect + 0.5 * rng.normal(size=(5, 60))
    paired = compare(a, b, paired_seeds=True, resamples=1000)
    unpaired = compare(a, b[:, rng.permutation(60)], paired_seeds=True, resamples=1000)  # scenes no longer matched
    assert (paired.high - paired.low) < 0.5 * (unpaired.high - unpaired.low)


def test_statistics_edge_cases():
    same = np.ones((3, 5))
    result = compare(same, same)
    assert result.difference == 0 and result.p_value == 1.0 and verdict(result, higher_is_better=True) == UNDECIDED
    with_nan = np.array([[1.0, float("nan"), 3.0], [2.0, 2.0, 4.0]])
    assert compare(with_nan, with_nan + 1).scenes == 2  # a scene missing in a row is left out
    set_level = compare([1.0, 1.1, 0.9, 1.05], [2.0, 2.1, 1.9, 2.05])
    assert set_level.test == "welch t over seeds" and set_level.high < 0 and set_level.p_value < 1e-4
    assert compare([1.0], [2.0, 3.0]).p_value is None  # one seed: nothing to test over seeds
    assert bootstrap_mean([[float("nan")]])["mean"] is None
    with pytest.raises(ValueError, match="same scenes"):
        compare(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="paired seeds"):
        compare(np.ones((2, 3)), np.ones((3, 3)), paired_seeds=True)


def test_the_p_value_is_over_seeds_so_more_scenes_of_the_same_models_do_not_shrink_it():
    # A test over scenes would call this tiny seed-level difference certain as scenes pile up;
    # repeating every scene ten times adds no information about another training run.
    rng = np.random.default_rng(3)
    a, b = _paired_rows(rng, shift=0.05)
    repeated = compare(np.tile(a, 10), np.tile(b, 10), resamples=200)
    once = compare(a, b, resamples=200)
    assert repeated.p_value == pytest.approx(once.p_value)
    assert once.p_value > 0.05


def test_pairing_seeds_that_share_batches_gives_tighter_intervals_and_more_power():
    # Seed i of both rows trains on the same batches: a seed effect shared by both rows.
    rng = np.random.default_rng(4)
    seeds, scenes = 8, 50
    shared_seed_effect = rng.normal(size=(seeds, 1))
    difficulty = rng.normal(size=scenes)
    a = difficulty + shared_seed_effect + 0.3 + 0.05 * rng.normal(size=(seeds, scenes))
    b = difficulty + shared_seed_effect + 0.05 * rng.normal(size=(seeds, scenes))
    paired = compare(a, b, paired_seeds=True, resamples=2000)
    unpaired = compare(a, b, resamples=2000)
    assert paired.test == "paired t over seeds" and unpaired.test == "welch t over seeds"
    assert (paired.high - paired.low) < 0.2 * (unpaired.high - unpaired.low)
    assert paired.p_value < 1e-6 < unpaired.p_value
    assert verdict(paired, higher_is_better=True) == "holds"
    assert verdict(unpaired, higher_is_better=True) == UNDECIDED


# ---------------------------------------------------------------- per-scene metrics and the scorer hook


class _DepthPainter(torch.nn.Module):
    """A stand-in generator: paints each image from its depth label, grey where depth is missing."""

    def forward(self, labels, masks):
        depth = labels["depth"] * masks["depth"][:, None]  # (B, 1, H, W)
        return torch.tanh(depth).expand(-1, 3, -1, -1), None


def _scenes(count, size=16):
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(count, 1, size, size, generator=g) * 2 - 1
    image = (torch.tanh(depth) + 0.3 * torch.randn(count, 3, size, size, generator=g)).clamp(-1, 1)
    return [{"image": image[i], "labels": {"depth": depth[i]}, "masks": {}} for i in range(count)]


def _batches(samples, size):
    return [torch.utils.data.default_collate(samples[i : i + size]) for i in range(0, len(samples), size)]


def _scorer(scene_scorers=()):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.AdaptiveAvgPool2d(1))
    extractor = FeatureExtractor(net, name="random conv (test only)")
    return Scorer(extractor, None, None, None, None, fid_method="eigh", kid_subsets=5, scene_scorers=scene_scorers)


def test_per_scene_metrics_follow_the_scenes_and_extra_scorers_are_applied():
    samples = _scenes(8)

    def brightness(fake, batch, masks):
        assert set(masks) == {"depth"} and masks["depth"].dtype == torch.bool
        return {"brightness": fake.mean(dim=(1, 2, 3))}  # (B,)

    scorer = _scorer([brightness])
    whole = evaluate_generator(_DepthPainter(), _batches(samples, 8), scorer, progress=False)
    pieces = evaluate_generator(_DepthPainter(), _batches(samples, 3), scorer, progress=False)
    assert set(whole["per_scene"]) == {"feature_distance", "l1", "psnr", "ssim", "brightness"}
    for name, values in whole["per_scene"].items():
        assert len(values) == 8 and np.allclose(values, pieces["per_scene"][name]), name  # scene order, any batching
    fake = torch.tanh(torch.stack([s["labels"]["depth"] for s in samples])).expand(-1, 3, -1, -1)
    real = torch.stack([s["image"] for s in samples])
    expected = (scorer.feature_extractor(fake) - scorer.feature_extractor(real)).norm(dim=1)
    assert np.allclose(whole["per_scene"]["feature_distance"], expected.numpy(), atol=1e-5)
    assert np.allclose(whole["per_scene"]["brightness"], fake.mean(dim=(1, 2, 3)).numpy(), atol=1e-6)
    assert whole["l1"] == pytest.approx(float(((fake - real).abs() / 2).mean()), abs=1e-6)
    assert whole["kid_subset_size"] == 4 and finite(whole["fid"])

    def wrong_shape(fake, batch, masks):
        return {"bad": torch.zeros(fake.shape[0], 2)}

    with pytest.raises(ValueError, match="'bad' must be"):
        evaluate_generator(_DepthPainter(), _batches(samples, 4), _scorer([wrong_shape]), progress=False)

    def clash(fake, batch, masks):
        return {"psnr": torch.zeros(fake.shape[0])}

    with pytest.raises(ValueError, match="already uses"):
        evaluate_generator(_DepthPainter(), _batches(samples, 4), _scorer([clash]), progress=False)


def test_the_study_applies_the_extra_scene_scorers(tmp_path, monkeypatch):
    from examples.studies import study as study_module
    from examples.studies.scoring import flatten_scene_metrics

    def controllability(fake, batch, masks):  # the shape of a per-image controllability result
        given = masks["depth"].flatten(1).float().mean(dim=1)  # (B,)
        nested = {"depth": {"given": {"share": given}, "missing": {"share": 1 - given}}}
        return flatten_scene_metrics(nested)

    monkeypatch.setattr(study_module, "extra_scene_scorers", lambda study: [controllability])
    study = study_module.Study(
        budget=BUDGETS["smoke"], work_dir=tmp_path / "work", cache_dir=tmp_path / "cache", progress=False
    )
    assert study.protocol()["scene_scorers"] == ["controllability"]
    condition = LabelCondition(sparsity=0.5, drop_labels=("edge",))
    result = study.measure(_DepthPainter(), condition)
    given = np.array(result["per_scene"]["depth.given.share"])
    assert len(given) == EVAL_SAMPLES and (given < 1).any()  # 50% sparsity dropped some depth regions
    assert np.allclose(given + np.array(result["per_scene"]["depth.missing.share"]), 1.0)


def test_measurements_of_another_protocol_are_refused(quality):
    variant = VARIANTS["asap-tlam-sparse"]
    config = run_config(variant, BUDGETS["smoke"], seed=0, out=checkpoint_of(quality).parent.parent)
    with pytest.raises(ValueError, match="another protocol"):
        train_and_measure(config, schedule=[1, 2], measure=lambda g: {}, protocol={"eval_set": "other"}, progress=False)


@pytest.mark.parametrize(
    "module", ["environment", "conditions", "budgets", "segmenters", "report", "editing", "statistics", "scoring"]
)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(f"examples.studies.{module}"))
    assert result.attempted > 0 and result.failed == 0


def test_sensitivity_reads_each_removed_labels_own_metrics():
    spec = importlib.util.spec_from_file_location("sensitivity_script", ROOT / "benchmarks" / "sensitivity.py")
    sensitivity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sensitivity)
    rng = np.random.default_rng(3)
    reference = [{"set": {}, "per_scene": {"depth.rmse": rng.random(20).tolist(), "edge.f1": [0.5] * 20}}]
    without_depth = [{"set": {}, "per_scene": {**reference[0]["per_scene"], "depth.rmse": [2.0] * 20}}]
    models = [{"averaged": {"all": r, "no depth": w}} for r, w in zip(reference, without_depth, strict=True)]
    claim = sensitivity._comparison(models, "removing depth hurts", "all", "no depth")
    own = sensitivity.own_label_metrics([claim], ["depth"])
    assert [check["metric"] for check in own["depth"]] == ["depth.rmse"]  # not edge's metric
    assert own["depth"][0]["difference"] < 0 and own["depth"][0]["low"] < 0  # removal raised the error


def test_controllability_scorer_reports_every_split_per_scene():
    import numpy as np

    from examples.studies.controllability import controllability_directions, controllability_scorer

    def estimator(x):  # a fixed stand-in: reads depth from brightness
        return {"semantic": torch.zeros(x.shape[0], 3, *x.shape[-2:]), "depth": 2 + x[:, :1]}

    batch = {
        "image": torch.rand(3, 3, 4, 4) * 2 - 1,
        "labels": {"semantic": torch.zeros(3, 4, 4, dtype=torch.long), "depth": torch.full((3, 1, 4, 4), 2.0)},
        "masks": {"semantic": torch.ones(3, 4, 4, dtype=torch.bool), "depth": torch.ones(3, 4, 4, dtype=torch.bool)},
    }
    masks = {"semantic": torch.ones(3, 4, 4, dtype=torch.bool), "depth": torch.zeros(3, 4, 4, dtype=torch.bool)}
    masks["depth"][0, :2] = True  # scene 0: depth given on half the pixels; scenes 1, 2: nowhere
    scores = controllability_scorer(estimator, num_classes=3, ignore_index=None)(batch["image"], batch, masks)
    assert set(scores) == set(controllability_directions())  # a fixed set of names, whatever the batch
    assert scores["semantic.given.pixel_accuracy"].tolist() == [1.0, 1.0, 1.0]
    assert np.isnan(scores["semantic.missing.pixel_accuracy"]).all()  # semantics was given everywhere
    given = scores["depth.given.abs_rel"]
    assert np.isfinite(given[0]) and np.isnan(given[1:]).all()
    assert np.isfinite(scores["depth.missing.abs_rel"]).all()
    assert np.isnan(scores["normal.given.angle_error"]).all()  # no normals in this batch


def test_consistency_matrix_finds_the_label_whose_removal_hurts_it():
    import numpy as np

    from benchmarks.sensitivity import consistency_matrix, consistency_matrix_lines

    rng = np.random.default_rng(0)
    labels = ["semantic", "depth"]

    def measurement(depth_key, depth_value):
        scenes = 40
        return {
            "set": {},
            "per_scene": {
                "semantic.given.pixel_accuracy": (0.8 + 0.01 * rng.normal(size=scenes)).tolist(),
                depth_key: (depth_value + 0.01 * rng.normal(size=scenes)).tolist(),
            },
        }

    per_model = [
        {
            "averaged": {
                "sparsity=0": measurement("depth.given.abs_rel", 0.1),
                "sparsity=0,without=semantic": measurement("depth.given.abs_rel", 0.1),
                "sparsity=0,without=depth": measurement("depth.missing.abs_rel", 0.3),
            }
        }
        for _ in range(4)
    ]
    # Without semantics, its consistency must be scored where it is missing: give it that key.
    for model in per_model:
        without = model["averaged"]["sparsity=0,without=semantic"]["per_scene"]
        without["semantic.missing.pixel_accuracy"] = without.pop("semantic.given.pixel_accuracy")
    matrix = consistency_matrix(per_model, labels, "sparsity=0")
    depth_on_depth = matrix["cells"]["depth"]["depth"]
    assert abs(depth_on_depth["degradation"] - 0.2) < 0.02 and depth_on_depth["verdict"] == "holds"
    assert matrix["cells"]["depth"]["semantic"]["verdict"] == "undecided at this budget"
    assert matrix["own_label_worst"]["depth"] is True
    assert "| depth |" in "\n".join(consistency_matrix_lines(matrix))
    assert consistency_matrix(per_model, labels, "sparsity=0.5") == {}


def test_segmenter_cache_key_follows_the_renderer(monkeypatch):
    from examples.datasets import SyntheticDataset
    from examples.studies.segmenters import SegmenterRecipe, cached_segmenter_path
    from examples.training.config import DataConfig

    before = cached_segmenter_path("/tmp/c", DataConfig(resolution=32), SegmenterRecipe())
    monkeypatch.setattr(SyntheticDataset, "_settings_key", lambda self: "renderer-changed")
    assert cached_segmenter_path("/tmp/c", DataConfig(resolution=32), SegmenterRecipe()) != before


def test_two_seeds_cannot_decide_what_the_test_over_seeds_doubts():
    # Two seeds whose per-seed differences disagree in size: the percentile bootstrap alone
    # would exclude zero (it can only draw three seed means), the t-interval does not.
    rng = np.random.default_rng(5)
    scenes = rng.normal(size=200)
    a = scenes + np.array([[0.02], [0.2]]) + 0.01 * rng.normal(size=(2, 200))
    b = scenes + 0.01 * rng.normal(size=(2, 200))
    result = compare(a, b, paired_seeds=True, resamples=2000)
    assert result.p_value > 0.05
    assert result.low < 0 < result.high and verdict(result, higher_is_better=True) == UNDECIDED
