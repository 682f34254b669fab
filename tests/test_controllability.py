"""Controllability: label estimators and the per-label consistency of generated images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from examples.datasets import SyntheticDataset
from examples.datasets.edges import canny
from examples.datasets.transforms import rgb_tensor_to_gray
from examples.metrics import ConfusionMatrix
from examples.metrics.controllability import (
    METRICS,
    ConsistencyAccumulator,
    flatten_consistency,
    label_consistency,
)
from examples.metrics.estimator import (
    CannyEdgeEstimator,
    LabelEstimator,
    combine_estimators,
    load_label_estimator,
    save_label_estimator,
)
from examples.metrics.estimator_training import (
    EstimatorRecipe,
    cached_estimator_path,
    obtain_label_estimator,
    train_label_estimator,
)

CLASSES = SyntheticDataset(1).num_classes


pytestmark = pytest.mark.usefixtures("one_thread")


def constant(**predictions):
    """An estimator that ignores the image and returns fixed predictions."""
    return lambda images: predictions


def synthetic_batch(n=4, resolution=16, seed=0):
    scenes = SyntheticDataset(n, resolution=resolution, seed=seed)
    samples = [scenes[i] for i in range(n)]
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "labels": {k: torch.stack([s["labels"][k] for s in samples]) for k in samples[0]["labels"]},
        "masks": {k: torch.stack([s["masks"][k] for s in samples]) for k in samples[0]["masks"]},
    }


# -- each metric against hand-computed cases ---------------------------------------------------------


def test_semantic_hand_computed():
    target = torch.tensor([[[0, 1, 2], [2, 2, 1]]])
    predicted = torch.tensor([[[0, 1, 1], [2, 2, 1]]])
    given = {"semantic": torch.tensor([[[True, True, True], [False, False, False]]])}
    logits = F.one_hot(predicted, 3).permute(0, 3, 1, 2).float()  # (1, 3, 2, 3)
    result = label_consistency(torch.zeros(1, 3, 2, 3), {"semantic": target}, given, constant(semantic=logits))
    # given row: class 0 IoU 1, class 1 IoU 1/2 (one of two predictions right), class 2 IoU 0.
    assert result["semantic"]["given"]["miou"] == pytest.approx(0.5)
    assert result["semantic"]["given"]["pixel_accuracy"] == pytest.approx(2 / 3)
    # missing row: classes 1 and 2 perfect, class 0 absent from both (left out of the mean).
    assert result["semantic"]["missing"] == {"miou": 1.0, "pixel_accuracy": 1.0, "pixels": 3}
    # class ids as predictions give the same figures
    ids = label_consistency(
        torch.zeros(1, 3, 2, 3), {"semantic": target}, given, constant(semantic=predicted), num_classes=3
    )
    assert ids["semantic"] == result["semantic"]


def test_semantic_matches_the_confusion_matrix_and_ignores_ignore_index():
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 5, (3, 6, 7), generator=g)
    predicted = torch.randint(1, 5, (3, 6, 7), generator=g)
    given = {"semantic": torch.rand(3, 6, 7, generator=g) < 0.6}
    present = {"semantic": torch.rand(3, 6, 7, generator=g) < 0.9}
    result = label_consistency(
        torch.zeros(3, 3, 6, 7),
        {"semantic": target},
        given,
        constant(semantic=predicted),
        label_present=present,
        num_classes=5,
        ignore_index=0,
    )
    for split, where in (("given", given["semantic"]), ("missing", ~given["semantic"])):
        reference = ConfusionMatrix(5, ignore_index=0)
        keep = where & present["semantic"]
        reference.update(predicted[keep], target[keep])
        score = reference.compute()
        assert result["semantic"][split]["miou"] == pytest.approx(score.miou, abs=1e-12)
        assert result["semantic"][split]["pixel_accuracy"] == pytest.approx(score.pixel_accuracy, abs=1e-12)
        assert result["semantic"][split]["pixels"] == score.pixels


def test_depth_hand_computed_with_one_median_scale_for_both_splits():
    target = torch.tensor([[[[1.0, 2.0], [4.0, 8.0]]]])
    predicted = torch.tensor([[[[2.0, 4.0], [8.0, 20.0]]]])
    given = {"depth": torch.tensor([[[True, True], [False, False]]])}
    result = label_consistency(torch.zeros(1, 3, 2, 2), {"depth": target}, given, constant(depth=predicted))
    # scale = median(1, 2, 4, 8) / median(2, 4, 8, 20) = 3 / 6: aligned prediction 1, 2, 4, 10
    assert result["depth"]["given"] == {"abs_rel": 0.0, "rmse": 0.0, "delta1": 1.0, "pixels": 2}
    missing = result["depth"]["missing"]
    assert missing["abs_rel"] == pytest.approx((0 + 2 / 8) / 2)
    assert missing["rmse"] == pytest.approx(math.sqrt((0 + 4) / 2))
    assert missing["delta1"] == 0.5  # 10 / 8 = 1.25 is not below 1.25


def test_depth_holes_and_bad_values_are_not_scored():
    target = torch.tensor([[[[2.0, 0.0], [float("nan"), 4.0]]]])
    present = {
        "depth": torch.tensor(
            [
                [
                    [
                        True,
                        True,
                    ],
                    [True, False],
                ]
            ]
        )
    }
    predicted = torch.tensor([[[[1.0, 50.0], [50.0, 50.0]]]])
    result = label_consistency(
        torch.zeros(1, 3, 2, 2), {"depth": target}, {}, constant(depth=predicted), label_present=present
    )
    # only the top-left pixel counts: its own median aligns it exactly
    assert result["depth"]["missing"] == {"abs_rel": 0.0, "rmse": 0.0, "delta1": 1.0, "pixels": 1}


def test_normal_hand_computed():
    target = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 4)
    predicted = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -0.1], [1.0, 1.0, 0.0, 1.0]]).view(1, 3, 1, 4)
    given = {"normal": torch.tensor([[[True, True, False, False]]])}
    result = label_consistency(torch.zeros(1, 3, 1, 4), {"normal": target}, given, constant(normal=predicted))
    assert result["normal"]["given"]["angle_error"] == pytest.approx((0 + 45) / 2)
    assert result["normal"]["given"]["within_11.25"] == 0.5
    assert result["normal"]["missing"]["angle_error"] == pytest.approx((90 + math.degrees(math.atan(0.1))) / 2)
    assert result["normal"]["missing"]["within_11.25"] == 0.5


def test_edge_f1_with_one_pixel_tolerance():
    target = torch.zeros(1, 1, 5, 5)
    target[..., 2] = 0.5  # a soft vertical edge at the threshold counts
    target[0, 0, 0, 4] = 0.49  # below it does not
    predicted = torch.zeros(1, 1, 5, 5)
    predicted[..., 3] = 0.9  # one pixel to the right: within tolerance
    predicted[0, 0, 0, 0] = 0.6  # two pixels away from the edge: a false positive
    everywhere = {"edge": torch.ones(1, 5, 5, dtype=torch.bool)}
    result = label_consistency(torch.zeros(1, 3, 5, 5), {"edge": target}, everywhere, constant(edge=predicted))
    given = result["edge"]["given"]
    assert given["precision"] == pytest.approx(5 / 6)
    assert given["recall"] == 1.0
    assert given["f1"] == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    # two pixels away is too far: shifting the prediction one more column loses everything
    shifted = torch.zeros(1, 1, 5, 5)
    shifted[..., 4] = 1.0
    far = label_consistency(torch.zeros(1, 3, 5, 5), {"edge": target}, everywhere, constant(edge=shifted))
    assert far["edge"]["given"]["f1"] == 0.0


def test_edge_f1_is_undefined_without_edges_and_zero_with_edges_on_one_side():
    none = torch.zeros(2, 1, 4, 4)
    some = torch.zeros(2, 1, 4, 4)
    some[1, 0, 1, 1] = 1.0
    given = {"edge": torch.ones(2, 4, 4, dtype=torch.bool)}
    result = label_consistency(torch.zeros(2, 3, 4, 4), {"edge": none}, given, constant(edge=some), per_image=True)
    f1 = result["edge"]["given"]["f1"]
    assert math.isnan(f1[0]) and f1[1] == 0.0


def test_curvature_hand_computed():
    target = torch.zeros(1, 2, 1, 3)
    predicted = torch.tensor([[[[1.0, 0.0, 2.0]], [[3.0, 0.0, -2.0]]]])
    given = {"curvature": torch.tensor([[[True, False, False]]])}
    result = label_consistency(torch.zeros(1, 3, 1, 3), {"curvature": target}, given, constant(curvature=predicted))
    assert result["curvature"]["given"] == {"mae": 2.0, "pixels": 1}
    assert result["curvature"]["missing"] == {"mae": 1.0, "pixels": 2}


# -- splits, accumulation, ceiling ---------------------------------------------------------------------


def test_given_and_missing_partition_the_present_pixels():
    batch = synthetic_batch(3)
    g = torch.Generator().manual_seed(0)
    given = {name: torch.rand(mask.shape, generator=g) < 0.5 for name, mask in batch["masks"].items()}
    estimator = LabelEstimator(CLASSES, width=4, depth=1)
    per_image = label_consistency(
        batch["image"], batch["labels"], given, estimator, label_present=batch["masks"], per_image=True
    )
    pooled = label_consistency(batch["image"], batch["labels"], given, estimator, label_present=batch["masks"])
    for name, present in batch["masks"].items():
        counts = per_image[name]["given"]["pixels"] + per_image[name]["missing"]["pixels"]
        np.testing.assert_array_equal(counts, present.flatten(1).sum(1).numpy())
        assert pooled[name]["given"]["pixels"] + pooled[name]["missing"]["pixels"] == int(present.sum())
    # an error summed over both splits is the error over all present pixels
    everywhere = {name: torch.ones_like(mask) for name, mask in batch["masks"].items()}
    whole = label_consistency(batch["image"], batch["labels"], everywhere, estimator, label_present=batch["masks"])
    for name, figure in (("curvature", "mae"), ("normal", "angle_error"), ("depth", "abs_rel")):
        parts = pooled[name]
        combined = sum(parts[s][figure] * parts[s]["pixels"] for s in parts) / whole[name]["given"]["pixels"]
        assert combined == pytest.approx(whole[name]["given"][figure], rel=1e-9)


def test_a_label_given_nowhere_reports_only_the_missing_split():
    batch = synthetic_batch(2)
    given = {name: torch.ones_like(mask) for name, mask in batch["masks"].items()}
    given["depth"] = torch.zeros_like(given["depth"])
    del given["normal"]  # no mask at all: given nowhere either
    result = label_consistency(
        batch["image"], batch["labels"], given, LabelEstimator(CLASSES, width=4, depth=1), label_present=batch["masks"]
    )
    assert sorted(result["depth"]) == ["missing"] and sorted(result["normal"]) == ["missing"]
    assert sorted(result["semantic"]) == ["given"]  # given everywhere: nothing is missing
    nowhere = {name: torch.zeros_like(mask) for name, mask in batch["masks"].items()}
    nowhere["semantic"] = batch["masks"]["semantic"]
    without_truth = label_consistency(
        batch["image"], batch["labels"], given, LabelEstimator(CLASSES, width=4, depth=1), label_present=nowhere
    )
    assert sorted(without_truth) == ["semantic"]  # a label whose truth exists nowhere is not scored
    for name, figures in METRICS.items():
        for split in result[name].values():
            assert sorted(split) == sorted([*figures, "pixels"])


def test_per_image_values_are_nan_where_a_split_is_empty():
    depth = torch.rand(2, 1, 3, 3) + 1
    given = {"depth": torch.zeros(2, 3, 3, dtype=torch.bool)}
    given["depth"][1] = True  # image 0 has no given pixel, image 1 no missing pixel
    result = label_consistency(torch.zeros(2, 3, 3, 3), {"depth": depth}, given, constant(depth=depth), per_image=True)
    assert np.isnan(result["depth"]["given"]["abs_rel"][0]) and result["depth"]["given"]["abs_rel"][1] == 0.0
    assert result["depth"]["missing"]["abs_rel"][0] == 0.0 and np.isnan(result["depth"]["missing"]["abs_rel"][1])
    assert result["depth"]["given"]["pixels"].tolist() == [0, 9]


def test_accumulating_batches_pools_pixels_and_confusion_counts():
    batch = synthetic_batch(4)
    g = torch.Generator().manual_seed(1)
    given = {name: torch.rand(mask.shape, generator=g) < 0.5 for name, mask in batch["masks"].items()}
    estimator = LabelEstimator(CLASSES, width=4, depth=1)
    whole = label_consistency(batch["image"], batch["labels"], given, estimator, label_present=batch["masks"])
    accumulator = ConsistencyAccumulator(estimator)
    for part in (slice(0, 1), slice(1, 4)):
        accumulator.update(
            batch["image"][part],
            {k: v[part] for k, v in batch["labels"].items()},
            {k: v[part] for k, v in given.items()},
            label_present={k: v[part] for k, v in batch["masks"].items()},
        )
    flat_whole, flat_parts = flatten_consistency(whole), flatten_consistency(accumulator.compute())
    assert flat_whole.keys() == flat_parts.keys()
    for key, value in flat_whole.items():
        assert flat_parts[key] == pytest.approx(value, rel=1e-5, nan_ok=True), key  # float32 convolutions
    assert len(accumulator.compute(per_image=True)["depth"]["given"]["rmse"]) == 4


def test_real_images_reach_exactly_the_ceiling():
    batch = synthetic_batch(3)
    g = torch.Generator().manual_seed(2)
    given = {name: torch.rand(mask.shape, generator=g) < 0.5 for name, mask in batch["masks"].items()}
    estimator = LabelEstimator(CLASSES, width=4, depth=1)
    for per_image in (False, True):
        result = label_consistency(
            batch["image"],
            batch["labels"],
            given,
            estimator,
            label_present=batch["masks"],
            real_images=batch["image"],
            per_image=per_image,
        )
        ceiling = result.pop("ceiling")
        flat, flat_ceiling = flatten_consistency(result), flatten_consistency(ceiling)
        assert flat.keys() == flat_ceiling.keys() and len(flat) > 0
        for key in flat:
            np.testing.assert_array_equal(flat[key], flat_ceiling[key])


def test_a_generator_that_copies_the_real_image_scores_the_ceiling_and_others_do_not():
    estimator = LabelEstimator(CLASSES, width=4, depth=1)
    copy, blank = ConsistencyAccumulator(estimator), ConsistencyAccumulator(estimator)
    for seed in (0, 1):  # two evaluation batches
        batch = synthetic_batch(2, seed=seed)
        given = {name: torch.ones_like(mask) for name, mask in batch["masks"].items()}
        kwargs = dict(label_present=batch["masks"], real_images=batch["image"])
        copy.update(batch["image"].clone(), batch["labels"], given, **kwargs)
        blank.update(torch.zeros_like(batch["image"]), batch["labels"], given, **kwargs)
    copied = copy.compute()
    assert flatten_consistency(copied.pop("ceiling")) == flatten_consistency(copied)
    blanked = blank.compute()
    assert flatten_consistency(blanked.pop("ceiling")) != flatten_consistency(blanked)


def test_bad_inputs_are_rejected_with_clear_errors():
    depth = torch.rand(2, 1, 4, 4) + 1
    images = torch.zeros(2, 3, 4, 4)
    estimator = constant(depth=depth)
    with pytest.raises(ValueError, match="given has masks for"):
        label_consistency(images, {"depth": depth}, {"edge": torch.ones(2, 4, 4, dtype=torch.bool)}, estimator)
    with pytest.raises(ValueError, match=r"given\['depth'\] has shape"):
        label_consistency(images, {"depth": depth}, {"depth": torch.ones(2, 5, 4, dtype=torch.bool)}, estimator)
    with pytest.raises(ValueError, match="images must have shape"):
        label_consistency(images[:, :2], {"depth": depth}, {}, estimator)
    with pytest.raises(ValueError, match="num_classes"):
        label_consistency(
            images,
            {"semantic": torch.zeros(2, 4, 4, dtype=torch.long)},
            {},
            constant(semantic=torch.zeros(2, 4, 4, dtype=torch.long)),
        )
    with pytest.raises(ValueError, match="class id 7"):
        label_consistency(
            images, {"semantic": torch.full((2, 4, 4), 7)}, {}, constant(semantic=torch.zeros(2, 3, 4, 4))
        )
    accumulator = ConsistencyAccumulator(estimator)
    accumulator.update(images, {"depth": depth}, {}, real_images=images)
    before = flatten_consistency(accumulator.compute())
    with pytest.raises(ValueError, match="every batch or with none"):
        accumulator.update(images, {"depth": depth}, {})
    with pytest.raises(ValueError, match="label_present"):
        bad = {"depth": torch.ones(2, 3, 4, dtype=torch.bool)}
        accumulator.update(images, {"depth": depth}, {}, label_present=bad, real_images=images)
    assert flatten_consistency(accumulator.compute()) == before and accumulator.num_images == 2  # nothing half-added
    with pytest.raises(ValueError, match="no batch"):
        ConsistencyAccumulator(estimator).compute()


# -- estimators ------------------------------------------------------------------------------------------


def test_canny_estimator_reproduces_the_loaders_edge_label():
    g = torch.Generator().manual_seed(0)
    rgb = F.interpolate(torch.randint(0, 256, (2, 3, 6, 6), generator=g).float(), size=(24, 24), mode="bilinear")
    images = (rgb / 127.5 - 1.0).float()
    labels = torch.stack([torch.from_numpy(canny(rgb_tensor_to_gray(image))) for image in rgb])[:, None].float()
    assert labels.sum() > 10
    given = {"edge": torch.ones(2, 24, 24, dtype=torch.bool)}
    result = label_consistency(images, {"edge": labels}, given, CannyEdgeEstimator())
    assert result["edge"]["given"]["f1"] == 1.0


def test_combined_estimators_read_each_label_once():
    depth = lambda x: {"depth": x[:, :1] + 2}  # noqa: E731
    both = combine_estimators(CannyEdgeEstimator(), depth)
    assert sorted(both(torch.zeros(1, 3, 8, 8))) == ["depth", "edge"]
    with pytest.raises(ValueError, match="depth"):
        combine_estimators(depth, depth)(torch.zeros(1, 3, 8, 8))


def test_label_estimator_outputs_are_in_label_units_and_round_trip(tmp_path):
    net = LabelEstimator(5, width=4, depth=2)
    out = net(torch.randn(2, 3, 9, 11))
    assert out["semantic"].shape == (2, 5, 9, 11)
    assert (out["depth"] > 0).all()
    torch.testing.assert_close(out["normal"].norm(dim=1), torch.ones(2, 9, 11))
    assert ((out["edge"] >= 0) & (out["edge"] <= 1)).all()
    path = tmp_path / "estimator.safetensors"
    save_label_estimator(net, path, metadata={"note": "test"})
    loaded = load_label_estimator(path)
    assert loaded.metadata == {"note": "test"}
    images = torch.randn(1, 3, 8, 8)
    for name, value in net(images).items():
        torch.testing.assert_close(loaded(images)[name], value)
    with pytest.raises(ValueError, match="labels must be"):
        LabelEstimator(5, labels=("semantic", "height"))
    with pytest.raises(FileNotFoundError):
        load_label_estimator(tmp_path / "none.safetensors")


def test_the_estimator_cache_key_follows_the_recipe_and_the_scenes(monkeypatch):
    recipe = EstimatorRecipe()
    path = cached_estimator_path("cache", 32, recipe)
    assert path == cached_estimator_path("cache", 32, EstimatorRecipe())
    assert path != cached_estimator_path("cache", 32, EstimatorRecipe(steps=7))
    assert path != cached_estimator_path("cache", 16, recipe)
    monkeypatch.setattr(SyntheticDataset, "_settings_key", lambda self: "renderer-changed")
    assert path != cached_estimator_path("cache", 32, recipe)


def test_obtain_trains_once_then_loads_the_cached_file(tmp_path):
    recipe = EstimatorRecipe(steps=2, width=4, depth=1, batch_size=2, samples=4)
    first, path = obtain_label_estimator(16, recipe, cache_dir=tmp_path, progress=False)
    assert path.is_file() and path.parent == tmp_path / "estimators"
    assert first.metadata["scene_settings"] == SyntheticDataset(1, resolution=16)._settings_key()
    second, same = obtain_label_estimator(16, recipe, cache_dir=tmp_path, progress=False)
    assert same == path
    images = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(second(images)["depth"], first(images)["depth"])


def test_training_lowers_every_loss():
    batch = synthetic_batch(8, resolution=16)
    samples = [
        {
            "image": batch["image"][i],
            "labels": {k: v[i] for k, v in batch["labels"].items()},
            "masks": {k: v[i] for k, v in batch["masks"].items()},
        }
        for i in range(8)
    ]
    result = train_label_estimator(samples, CLASSES, 40, width=8, depth=2, batch_size=8, flip=False)
    for name, losses in result.losses.items():
        assert all(math.isfinite(v) for v in losses)
        assert np.mean(losses[-5:]) < np.mean(losses[:5]), name
    # a list of collated batches trains the same as the samples it holds, batched in that order
    batches = train_label_estimator([batch], CLASSES, 2, width=4, depth=1, flip=False)
    assert len(batches.losses["depth"]) == 2


# -- integration: evaluate.py and the evaluator ------------------------------------------------------------


def tiny_checkpoint(folder, labels=None):
    """An untrained merger+generator saved as a training checkpoint (32x32 synthetic scenes)."""
    from examples.studies.budgets import BUDGETS
    from examples.training.builders import build_networks, specs_to_dict
    from examples.training.checkpoint import save_checkpoint
    from examples.training.config import DataConfig, RunConfig

    config = RunConfig(data=DataConfig(resolution=32, labels=labels, val_samples=4), model=BUDGETS["smoke"].model)
    specs = SyntheticDataset(1, resolution=32, labels=labels).label_specs
    generator, _ = build_networks(config, specs)
    return save_checkpoint(
        folder,
        1,
        modules={"generator": generator},
        optimizers={},
        config={**config.to_dict(), "label_specs": specs_to_dict(specs)},
    )


class Replay(torch.nn.Module):
    """A "generator" that returns the real images of the batches, in order: it copies the scene."""

    def __init__(self, images):
        super().__init__()
        self.images = list(images)

    def forward(self, labels, masks):
        return self.images.pop(0), None


def test_pooled_consistency_splits_by_what_the_model_was_given():
    from examples.evaluate import PooledConsistency
    from examples.metrics import SmallSegmenter
    from examples.studies.conditions import LabelCondition
    from examples.studies.scoring import build_scorer, evaluate_generator, evaluation_loader

    scenes = SyntheticDataset(4, resolution=16, seed=5)
    loader = evaluation_loader(scenes, batch_size=2)
    estimator = LabelEstimator(CLASSES, width=4, depth=1)
    condition = LabelCondition(sparsity=0.5, drop_labels=("depth",))
    copy = Replay(batch["image"] for batch in loader)
    consistency = PooledConsistency(estimator, model_labels=["semantic", "depth", "normal", "edge"])
    scorer = build_scorer(
        segmenter=SmallSegmenter(CLASSES, width=4, depth=1),
        segmenter_path=None,
        semantic_spec=scenes.label_specs["semantic"],
        scene_scorers=[consistency],
    )
    evaluate_generator(copy, loader, scorer, condition, progress=False)
    result = consistency.accumulator.compute()
    ceiling = result.pop("ceiling")
    assert flatten_consistency(result) == flatten_consistency(ceiling)  # copying the scene reaches the ceiling
    assert sorted(result["depth"]) == ["missing"]  # removed
    assert sorted(result["curvature"]) == ["missing"]  # not a label of the model
    assert sorted(result["normal"]) == ["given", "missing"]  # sparse


def test_evaluate_script_reports_controllability(tmp_path):
    from examples.evaluate import main

    checkpoint = tiny_checkpoint(tmp_path / "run" / "checkpoints", labels=["semantic", "depth", "normal", "edge"])
    estimator_file = tmp_path / "estimator.safetensors"
    save_label_estimator(LabelEstimator(CLASSES, width=4, depth=1), estimator_file)
    out = tmp_path / "eval.json"
    results = main(
        [
            str(checkpoint),
            "--budget",
            "smoke",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--num-samples",
            "4",
            "--batch-size",
            "2",
            "--drop-label",
            "edge",
            "--controllability",
            "--estimator",
            str(estimator_file),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert results["label_estimator"].startswith("estimator.safetensors (sha256 ")
    control = results["controllability"]
    assert sorted(control["edge"]) == ["missing"] and sorted(control["depth"]) == ["given"]
    assert control["ceiling"]["semantic"]["given"]["pixels"] == 4 * 32 * 32
    assert out.is_file()


def test_generation_evaluator_accumulates_controllability_when_given_masks():
    from examples.metrics import GenerationEvaluator

    batch = synthetic_batch(2)
    estimator = LabelEstimator(CLASSES, width=4, depth=1)
    evaluator = GenerationEvaluator(consistency=ConsistencyAccumulator(estimator))
    evaluator.update_from_batch(batch["image"], batch, given=batch["masks"])
    results = evaluator.compute()
    assert results["controllability"]["depth"]["given"]["pixels"] == int(batch["masks"]["depth"].sum())
    assert GenerationEvaluator(consistency=ConsistencyAccumulator(estimator)).compute() == {}


@pytest.mark.parametrize("module", ["controllability", "estimator", "estimator_training"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"examples.metrics.{module}"))
    assert result.attempted > 0 and result.failed == 0


# -- a generator whose shading is scrambled --------------------------------------------------------------

PALETTE = torch.rand(CLASSES, 3, generator=torch.Generator().manual_seed(4)) * 0.8 + 0.2  # a colour per class


def shade(semantic, depth):
    """Images of the scenes' labels: the class colour, darkened with depth (``exp(-depth / 4)``)."""
    colour = PALETTE[semantic].permute(0, 3, 1, 2)  # (B, 3, H, W)
    return (colour * torch.exp(-depth / 4)) * 2 - 1


class ShadingReader:
    """An analytic estimator: class from the colour's hue, depth from how dark it is, normals from depth.

    It reads each label from a different cue of the image, as a trained network does (materials
    tell the class; shading tells distance and orientation), which is what the test needs.
    """

    def __call__(self, images):
        rgb = (images + 1) / 2
        brightness = rgb.sum(dim=1, keepdim=True).clamp_min(1e-6)  # (B, 1, H, W)
        hue = rgb / brightness
        palette_hue = PALETTE / PALETTE.sum(dim=1, keepdim=True)
        semantic = ((hue[:, None] - palette_hue[None, :, :, None, None]) ** 2).sum(dim=2).argmin(dim=1)  # (B, H, W)
        palette_brightness = PALETTE.sum(dim=1)[semantic][:, None]  # (B, 1, H, W)
        depth = (-4 * torch.log(brightness / palette_brightness)).clamp_min(1e-3)
        return {"semantic": semantic, "depth": depth, "normal": normals_from_depth(depth)}


def normals_from_depth(depth):
    """Unit normals facing the camera from depth differences between neighbouring pixels."""
    dz_dx = F.pad(depth[..., :, 1:] - depth[..., :, :-1], (0, 1, 0, 0), mode="replicate")
    dz_dy = F.pad(depth[..., 1:, :] - depth[..., :-1, :], (0, 0, 0, 1), mode="replicate")
    normal = torch.cat([-dz_dx * 8, -dz_dy * 8, -torch.ones_like(depth)], dim=1)  # (B, 3, H, W)
    return F.normalize(normal, dim=1)


def test_scrambled_shading_hurts_depth_and_normals_more_than_semantics():
    batch = synthetic_batch(8, resolution=32)
    semantic, depth = batch["labels"]["semantic"], batch["labels"]["depth"]
    present = {"semantic": batch["masks"]["semantic"], "depth": batch["masks"]["depth"]}
    labels = {"semantic": semantic, "depth": depth, "normal": normals_from_depth(depth)}  # the reader's normals
    present["normal"] = present["depth"]
    given = {name: torch.ones_like(mask) for name, mask in present.items()}
    order = torch.randperm(32 * 32, generator=torch.Generator().manual_seed(0))
    scrambled_depth = depth.flatten(2)[..., order].view_as(depth)  # shading of random other pixels

    def score(images):
        result = label_consistency(images, labels, given, ShadingReader(), label_present=present, num_classes=CLASSES)
        return {
            "semantic": result["semantic"]["given"]["pixel_accuracy"],
            "depth": result["depth"]["given"]["delta1"],
            "normal": result["normal"]["given"]["within_11.25"],
        }

    real, blank = score(shade(semantic, depth)), score(torch.zeros(8, 3, 32, 32))
    scrambled = score(shade(semantic, scrambled_depth))
    # the share of the real image's advantage over a blank image that the scrambled one keeps
    kept = {name: (scrambled[name] - blank[name]) / (real[name] - blank[name]) for name in real}
    assert real["semantic"] > 0.99 and real["depth"] > 0.99 and real["normal"] > 0.99  # the reader works
    assert kept["semantic"] > 0.99
    assert kept["depth"] < 0.5 and kept["normal"] < 0.5
