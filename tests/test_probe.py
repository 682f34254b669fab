"""The merger-capacity probe: its pieces and a smoke run of the script."""

import json

import numpy as np
import torch

from examples.studies.probe import (
    ROWS,
    ProbeConfig,
    SceneTensors,
    build_probe,
    probe_masks,
    render_scenes,
    total_variance,
)


def tiny_scenes():
    return render_scenes(6, 16, seed=3)


def test_rows_differ_only_in_the_merger():
    scenes = tiny_scenes()
    config = ProbeConfig(dim=8, heads=2, decoder_width=8)
    decoders = {row.name: build_probe(row, scenes.specs, config).decoder for row in ROWS}
    shapes = {name: [tuple(p.shape) for p in d.parameters()][2:] for name, d in decoders.items()}
    assert len({tuple(s) for s in shapes.values()}) == 1  # same decoder after its input layer


def test_eval_masks_are_fixed_and_sparse_rows_lose_labels():
    scenes = tiny_scenes()
    a, b = probe_masks(scenes, 0.5, seed=0), probe_masks(scenes, 0.5, seed=0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    dense = probe_masks(scenes, 0.0, seed=0)
    kept = sum(int(a[k].sum()) for k in a) / sum(int(dense[k].sum()) for k in dense)
    assert 0.2 < kept < 0.8


def test_total_variance_is_r2_denominator():
    images = torch.randn(4, 3, 5, 5)
    sst = total_variance(images)
    mean = images.mean(dim=(0, 2, 3), keepdim=True)
    sse_of_mean = (mean.expand_as(images) - images).square().flatten(1).sum(1).numpy()
    np.testing.assert_allclose(1 - sse_of_mean.sum() / sst.sum(), 0.0, atol=1e-12)


def test_scene_tensors_take_keeps_everything_aligned():
    scenes = tiny_scenes()
    part = scenes.take(torch.tensor([4, 1]))
    assert isinstance(part, SceneTensors) and len(part) == 2
    assert torch.equal(part.images[0], scenes.images[4]) and torch.equal(
        part.labels["depth"][1], scenes.labels["depth"][1]
    )


def test_probe_script_smoke(tmp_path):
    from benchmarks.merger_probe import main

    rows = ["--rows", "naive-dense", "tlam-dense", "clam-dense"]
    common = ["--smoke", "--results-dir", str(tmp_path), "--work-dir", str(tmp_path / "runs"), "--no-progress"]
    report = main([*common, *rows])
    saved = json.loads((tmp_path / "merger_probe.json").read_text())
    assert set(saved["rows"]) == {"naive-dense", "tlam-dense", "clam-dense"}
    assert [c["claim"] for c in report["claims"]] == [
        "TLAM > CLAM (dense)",
        "CLAM > naive (dense)",
        "TLAM > naive (dense)",
    ]
    for c in report["claims"]:
        assert c["low"] <= c["difference"] <= c["high"]
    assert (tmp_path / "merger_probe.png").stat().st_size > 0
    # A second start reuses the saved runs and measures them identically.
    again = main([*common, *rows])
    assert [r["r2"] for r in again["rows"]["tlam-dense"]["runs"]] == [
        r["r2"] for r in report["rows"]["tlam-dense"]["runs"]
    ]
