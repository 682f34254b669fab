"""The merger choice study: its rows, its runs' bookkeeping and a smoke run of the whole script."""

import json

import numpy as np
import pytest
import torch

from benchmarks import merger_choice
from examples.studies.fidelity import class_readout, fit_linear_readout
from examples.studies.probe import ProbeConfig, ProbeRow, build_probe, raw_specs, render_scenes


def test_every_run_is_defined_once_and_rows_differ_only_where_they_say():
    jobs = merger_choice.all_jobs()
    assert len({(row.name, seed) for row, seed in jobs}) == len(jobs)
    rows = {row.name: row for row, _ in jobs}
    # the ladder's rungs: the paper's naive has neither normalisation nor presence channels
    assert not rows["naive-paper-dense"].normalize and not rows["naive-paper-dense"].include_masks
    assert rows["naive-norm-dense"].normalize and not rows["naive-norm-dense"].include_masks
    assert rows["naive-dense"] == ProbeRow("naive-dense", "naive", False)  # the probe's own row
    assert rows["tlam-w64-sparse"].configure(ProbeConfig()).dim == 64
    assert rows["tlam-sparse-long"].configure(ProbeConfig()).steps == merger_choice.LONG_STEPS
    assert rows["clam-w96-dense"].configure(ProbeConfig()).dim == 96  # the paper's width
    # cheap runs first and TLAM's long runs last, so a cut-short training still answers most parts
    cheap = [row.merger != "tlam" and (row.dim or 16) <= 64 for row, _ in jobs]
    assert cheap == sorted(cheap, reverse=True)
    long_tlam = sum((row.steps or 0) > ProbeConfig.steps for row, _ in jobs if row.merger == "tlam")
    assert long_tlam == len(merger_choice.WIDTHS) * len(merger_choice.SEEDS["width"])
    assert all((row.steps or 0) > ProbeConfig.steps for row, _ in jobs[-long_tlam:])


def test_raw_rows_see_unnormalised_labels():
    scenes = render_scenes(2, 16, 0)
    raw = raw_specs(scenes.specs)
    assert raw["depth"].shift is None and raw["depth"].scale is None
    assert scenes.specs["depth"].shift is not None and raw["semantic"] == scenes.specs["semantic"]
    model = build_probe(
        ProbeRow("x", "naive", False, normalize=False, include_masks=False), scenes.specs, ProbeConfig()
    )
    concept = model.merger(scenes.labels, scenes.masks)
    depth_channel = scenes.specs["semantic"].channels  # one-hot classes first, then depth
    torch.testing.assert_close(concept[:, depth_channel], scenes.labels["depth"][:, 0])
    assert model.merger.out_channels == sum(s.channels for s in scenes.specs.values())


def test_removal_conditions_cover_each_label_each_pair_and_all_but_one():
    found = merger_choice.removal_conditions(["a", "b", "c"])
    assert found["without a"] == ("a",) and found["without a+c"] == ("a", "c") and found["only b"] == ("a", "c")
    assert len(found) == 3 + 3 + 3


def test_a_claimed_run_is_left_to_the_process_that_claimed_it(tmp_path):
    path = tmp_path / "row" / "seed0-x.safetensors"
    path.parent.mkdir()
    path.with_suffix(".claim").write_text("123\n")
    row = ProbeRow("row", "naive", False)
    assert merger_choice.train_run(path, row, 0, train=None, config=ProbeConfig()) is False
    assert not path.exists()


def test_linear_readout_recovers_classes_that_features_separate():
    classes = torch.arange(6).repeat(50)  # (300,)
    features = torch.nn.functional.one_hot(classes, 6).double() * 2 + 0.01 * torch.randn(300, 6, dtype=torch.double)
    weights = fit_linear_readout(features, classes, 6)
    predicted = (torch.cat([features, torch.ones(300, 1, dtype=torch.double)], 1) @ weights).argmax(1)
    assert torch.equal(predicted, classes)


def test_class_readout_of_the_one_hot_map_is_perfect_and_reports_each_tlam_stage():
    fit, test = render_scenes(4, 16, 0), render_scenes(4, 16, 9)
    config = ProbeConfig(dim=8, heads=2)
    naive = build_probe(ProbeRow("n", "naive", False), fit.specs, config).merger
    assert class_readout(naive, fit, test) == {"concept": {"miou": 1.0, "pixel_accuracy": 1.0}}
    tlam = build_probe(ProbeRow("t", "tlam", False), fit.specs, config).merger.eval()
    stages = class_readout(tlam, fit, test)
    assert list(stages) == ["semantic token, embedded", "semantic token, after the blocks", "concept"]
    assert stages["semantic token, embedded"]["pixel_accuracy"] == 1.0  # a lookup keeps every class apart
    assert all(0 <= s["miou"] <= 1 for s in stages.values())


@pytest.mark.slow
def test_merger_choice_script_smoke(tmp_path):
    args = ["all", "--smoke", "--no-progress", "--work-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path)]
    reports = merger_choice.main(args)
    assert set(reports) == set(merger_choice.PARTS)
    for part in merger_choice.PARTS:
        saved = json.loads((tmp_path / f"merger_choice_{part}.json").read_text())
        assert saved["part"] == part and saved["machine"]["cpu"]
        assert (tmp_path / f"merger_choice_{part}.png").stat().st_size > 0
        assert "# Choosing a merger" in (tmp_path / f"merger_choice_{part}.md").read_text()
    ladder = reports["ladder"]
    assert {"naive-paper-dense", "naive-norm-sparse", "tlam-raw-dense"} <= set(ladder["rows"])
    assert all(c["test"] == "paired t over seeds" for c in ladder["claims"])
    missing = reports["missing"]["conditions"]
    assert {"sparsity 0.9", "without depth", "without semantic+edge", "only semantic"} <= set(missing)
    # R² is a per-scene share of explained variance: finite, at most 1
    values = np.array([s["mean"] for by_row in missing.values() for s in by_row.values()])
    assert np.isfinite(values).all() and (values <= 1).all()
    # a second run trains nothing: every run is reused
    assert merger_choice.Study(merger_choice.build_parser().parse_args(args)).train_all() == 0
