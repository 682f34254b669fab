"""Evaluate a trained checkpoint: FID, KID, PSNR, SSIM and the segmentation score, as JSON.

    python examples/evaluate.py runs/asap_tlam/checkpoints/step_00001500.safetensors
    python examples/evaluate.py CHECKPOINT --sparsity 0.5 --drop-label edge --out eval.json
    python examples/evaluate.py CHECKPOINT --fid-weights pt_inception-2015-12-05-6726825d.pth
    python examples/evaluate.py CHECKPOINT --segmenter my_segmenter.safetensors
    python examples/evaluate.py CHECKPOINT --sparsity 0.5 --controllability

The default evaluation set is the held-out split of the checkpoint's configuration (for the
synthetic dataset: its held-out scenes). FID and KID use the standard FID Inception features when
its weights file is given (``--fid-weights`` or ``$LABEL_MERGE_FID_WEIGHTS``); otherwise the
pooled features of the project's small segmenter, and the JSON says they are not comparable to
published FIDs. The segmentation score uses ``--segmenter`` (a SmallSegmenter file) or the small
segmenter trained on the dataset's real training images, trained once and kept under
``--cache-dir`` (default ``$LABEL_MERGE_CACHE`` or ``~/.cache/label-merge``).

``--controllability`` also re-reads every label from the generated images and scores it against
the scene's true label, separately where the label was given to the model and where it was
missing, with the same figures on the real images as the ceiling. On the synthetic scenes the
label estimator is ``--estimator`` (a LabelEstimator file) or the one trained on the scenes'
real images and cached like the segmenter; on a real dataset only the edges are read (Canny).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import os  # noqa: E402
from dataclasses import replace  # noqa: E402

import torch  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from examples.metrics import (  # noqa: E402
    CannyEdgeEstimator,
    ConsistencyAccumulator,
    EstimatorRecipe,
    load_label_estimator,
    load_segmenter,
    obtain_label_estimator,
)
from examples.studies.budgets import BUDGETS, resolve_budget  # noqa: E402
from examples.studies.conditions import LabelCondition  # noqa: E402
from examples.studies.environment import configure_cpu, default_cache_dir, machine_info, utc_now, write_json  # noqa: E402, E501
from examples.studies.scoring import build_scorer, evaluate_generator, evaluation_loader, fid_weights_from  # noqa: E402
from examples.studies.segmenters import SegmenterRecipe, file_digest, obtain_segmenter  # noqa: E402
from examples.training.builders import build_datasets, image_size, label_specs_of, restore_generator  # noqa: E402
from examples.training.checkpoint import CheckpointError  # noqa: E402

__all__ = ["evaluate_checkpoint", "PooledConsistency", "default_output", "main"]


def default_output(checkpoint: Path, *, split: str, condition: LabelCondition) -> Path:
    """``<run>/evaluation/<checkpoint>_<split>[_sparsity0.5][_without-edge].json``.

    Example:
        >>> default_output(Path("run/checkpoints/step_00000010.safetensors"), split="val",
        ...                condition=LabelCondition(sparsity=0.5, drop_labels=("edge",))).as_posix()
        'run/evaluation/step_00000010_val_sparsity0.5_without-edge.json'
    """
    name = f"{checkpoint.stem}_{split}"
    if condition.sparsity:
        name += f"_sparsity{condition.sparsity:g}"
        if condition.seed:
            name += f"-seed{condition.seed}"
    for label in condition.drop_labels:
        name += f"_without-{label}"
    return checkpoint.parent.parent / "evaluation" / f"{name}.json"


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    split: str = "val",
    num_samples: int | None = None,
    data_root: str | None = None,
    condition: LabelCondition | None = None,
    fid_weights: str | None = None,
    segmenter: str | os.PathLike | None = None,
    recipe: SegmenterRecipe = BUDGETS["cpu-hour"].segmenter,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = True,
    controllability: bool = False,
    estimator: str | os.PathLike | None = None,
    estimator_recipe: EstimatorRecipe | None = None,
) -> dict:
    """Measure a checkpoint on a split of its dataset.

    Args:
        checkpoint: A file written by the training loop.
        split: ``val`` (the held-out split) or ``train``.
        num_samples: Evaluate the first ``num_samples`` samples of the split (None: all of it).
        data_root: The dataset's folder, when it moved since training (real datasets).
        condition: Evaluation sparsity (seeded) and removed labels (None: dense, all labels).
        fid_weights: FID Inception weights file, or None for the small segmenter's features.
        segmenter: A SmallSegmenter file for the segmentation score, or None for the cached one
            trained on the dataset's real training images (trained now if missing).
        recipe: How that segmenter is trained.
        cache_dir: Where the trained segmenter is kept (default ``$LABEL_MERGE_CACHE`` or ``~/.cache/label-merge``).
        batch_size: Generation batch.
        device: Where to run.
        progress: Show progress bars.
        controllability: Also measure per-label consistency, in the same pass (see :class:`PooledConsistency`).
        estimator: A LabelEstimator file for it, or None for the cached one of the synthetic
            scenes (trained now if missing); real datasets without a file read edges only (Canny).
        estimator_recipe: How that estimator is trained (None: the default :class:`EstimatorRecipe`).

    Returns:
        The results (metrics, the networks used, the condition, checkpoint and dataset), with
        ``controllability`` and ``label_estimator`` when asked for.

    Raises:
        FileNotFoundError: A missing checkpoint, segmenter or FID weights file.
        ValueError: A bad split or sample count, or a removed label the model does not have.

    Example:
        >>> results = evaluate_checkpoint("run/checkpoints/step_00001500.safetensors", num_samples=64)  # doctest: +SKIP
        >>> results["fid"], results["feature_extractor"]  # doctest: +SKIP
    """
    condition = condition or LabelCondition()
    if split not in ("val", "train"):
        raise ValueError(f"split must be 'val' or 'train', got {split!r}")
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2
    ):
        raise ValueError(f"num_samples must be an int >= 2 (FID needs two images), got {num_samples!r}")
    checkpoint = Path(checkpoint)
    generator, config, specs = restore_generator(checkpoint, device=device)
    condition.check_labels(specs)
    data = config.data
    if data_root is not None:
        data = replace(data, data_root=data_root)
    if data.dataset == "synthetic":
        # Every label (the semantic map scores the images even when the model does not see it);
        # as many held-out scenes as asked for; rendered afresh (the run's scene cache may be
        # on another machine).
        data = replace(data, labels=None, val_samples=num_samples or data.val_samples, cache_dir=None)
    train_set, val_set = build_datasets(data, seed=config.train.seed)
    dataset = val_set if split == "val" else train_set
    if num_samples is not None:
        if num_samples > len(dataset):
            raise ValueError(f"--num-samples {num_samples} exceeds the {len(dataset)} samples of the {split} split")
        dataset = Subset(dataset, range(num_samples))
    dataset_specs = label_specs_of(dataset)
    semantic_spec = dataset_specs.get("semantic")
    if semantic_spec is not None and not semantic_spec.is_categorical:
        semantic_spec = None
    net, net_path = None, None
    if segmenter is not None:
        net_path = Path(segmenter)
        net = load_segmenter(net_path, device=device)
        if semantic_spec is not None and net.num_classes != semantic_spec.num_classes:
            raise ValueError(
                f"segmenter {net_path} predicts {net.num_classes} classes, the dataset's semantic label has "
                f"{semantic_spec.num_classes}"
            )
    elif semantic_spec is not None:
        net, net_path = obtain_segmenter(
            data, recipe, cache_dir=cache_dir or default_cache_dir(), device=device, progress=progress
        )
    consistency = None
    if controllability:
        if estimator is not None:
            reader, reader_name = load_label_estimator(estimator, device=device), _file_name(estimator)
        elif data.dataset == "synthetic":
            reader, reader_path = obtain_label_estimator(
                image_size(data),
                estimator_recipe or EstimatorRecipe(),
                cache_dir=cache_dir or default_cache_dir(),
                device=device,
                progress=progress,
            )
            reader_name = _file_name(reader_path)
        else:
            reader, reader_name = CannyEdgeEstimator(), repr(CannyEdgeEstimator())
        consistency = PooledConsistency(reader, model_labels=list(specs), semantic_spec=semantic_spec)
    scorer = build_scorer(
        segmenter=net,
        segmenter_path=net_path,
        semantic_spec=semantic_spec,
        fid_weights=fid_weights,
        device=device,
        scene_scorers=[consistency] if consistency is not None else (),
    )
    loader = evaluation_loader(dataset, batch_size=batch_size, workers=data.workers)
    results = evaluate_generator(
        generator, loader, scorer, condition, device=device, progress=progress, desc=f"evaluating {checkpoint.name}"
    )
    if consistency is not None:
        results["controllability"] = consistency.accumulator.compute()
        results["label_estimator"] = reader_name
    return {
        "checkpoint": str(checkpoint),
        "step": int(checkpoint.stem.split("_")[1]) if checkpoint.stem.startswith("step_") else None,
        "dataset": data.dataset,
        "split": split,
        "evaluation_set": repr(val_set if split == "val" else train_set) if data.dataset == "synthetic" else split,
        "model": {"merger": config.model.merger, "generator": config.model.generator, "labels": list(specs)},
        **results,
        "segmenter_file": str(net_path) if net_path else None,
        "machine": machine_info(device),
        "date": utc_now(),
    }


class PooledConsistency:
    """A scene scorer for :func:`~examples.studies.scoring.evaluate_generator` that measures
    controllability on the images of that same pass (no second generation).

    It feeds every batch into a :class:`~examples.metrics.ConsistencyAccumulator` (pooled
    figures and the real images' ceiling, read with ``accumulator.compute()`` afterwards) and adds
    no per-scene metric. A label is *given* where the model was given it: where its mask is True,
    for the labels the model takes; a removed label, or one the model does not take, is missing
    everywhere.

    Args:
        estimator: Reads labels from images (see :mod:`examples.metrics.estimator`).
        model_labels: The labels the model takes.
        semantic_spec: The dataset's semantic label (classes, ignored id), or None.
    """

    __name__ = "pooled_controllability"  # how the scorer is named in the recorded protocol

    def __init__(self, estimator, *, model_labels: list[str], semantic_spec=None) -> None:
        self.model_labels = list(model_labels)
        self.accumulator = ConsistencyAccumulator(
            estimator,
            num_classes=semantic_spec.num_classes if semantic_spec is not None else None,
            ignore_index=semantic_spec.ignore_index if semantic_spec is not None else None,
        )

    def __call__(self, fake: torch.Tensor, batch, masks) -> dict:
        given = {name: mask for name, mask in masks.items() if name in self.model_labels}
        self.accumulator.update_from_batch(fake, batch, given)
        return {}


def _file_name(path: str | os.PathLike) -> str:
    return f"{Path(path).name} (sha256 {file_digest(path)[:12]})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("checkpoint", help="a checkpoint written by train_asap_tlam.py")
    p.add_argument("--split", choices=("val", "train"), default="val", help="dataset split")
    p.add_argument("--num-samples", type=int, help="evaluate the first N samples (synthetic: N held-out scenes)")
    p.add_argument("--data-root", help="the dataset's folder, if it moved since training")
    p.add_argument("--sparsity", type=float, default=0.0, help="region dropout probability S at evaluation")
    p.add_argument("--sparsity-seed", type=int, default=0, help="seed of the evaluation masks")
    p.add_argument("--drop-label", action="append", default=[], metavar="NAME", help="remove a label (repeatable)")
    p.add_argument("--fid-weights", help="FID Inception weights (default $LABEL_MERGE_FID_WEIGHTS)")
    p.add_argument("--segmenter", help="a SmallSegmenter .safetensors file for the segmentation score")
    p.add_argument("--cache-dir", help="where the trained small segmenter (and label estimator) is kept")
    p.add_argument(
        "--controllability", action="store_true", help="also score each label re-read from the images (given/missing)"
    )
    p.add_argument("--estimator", help="a LabelEstimator .safetensors file for --controllability")
    p.add_argument("--budget", default="cpu-hour", help=f"whose segmenter recipe to use: one of {sorted(BUDGETS)}")
    p.add_argument("--batch-size", type=int, default=16, help="generation batch")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's)")
    p.add_argument("--out", help="output JSON (default: <run>/evaluation/<checkpoint>_<split>...json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        condition = LabelCondition(sparsity=args.sparsity, seed=args.sparsity_seed, drop_labels=tuple(args.drop_label))
        recipe = resolve_budget(args.budget).segmenter
        configure_cpu(args.threads)
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
        results = evaluate_checkpoint(
            args.checkpoint,
            split=args.split,
            num_samples=args.num_samples,
            data_root=args.data_root,
            condition=condition,
            fid_weights=fid_weights_from(args.fid_weights),
            segmenter=args.segmenter,
            recipe=recipe,
            cache_dir=args.cache_dir,
            batch_size=args.batch_size,
            device=args.device,
            progress=not args.no_progress,
            controllability=args.controllability,
            estimator=args.estimator,
        )
    except (FileNotFoundError, ValueError, CheckpointError) as err:
        raise SystemExit(f"evaluate.py: {err}") from None
    out = Path(args.out) if args.out else default_output(Path(args.checkpoint), split=args.split, condition=condition)
    write_json(out, results)
    summary = ", ".join(
        f"{key} {results[key]:.4g}"
        for key in ("fid", "kid_mean", "psnr", "ssim", "miou", "pixel_accuracy")
        if key in results
    )
    print(f"{condition.describe()}: {summary}")
    print(f"FID features: {results['feature_extractor']}")
    for label, splits in results.get("controllability", {}).items():
        if label != "ceiling":
            print(
                f"{label}: "
                + "; ".join(_summary(splits[split], split) for split in ("given", "missing") if split in splits)
            )
    print(f"wrote {out}")
    return results


def _summary(figures: dict, split: str) -> str:
    return f"{split} " + ", ".join(f"{key} {value:.3g}" for key, value in figures.items() if key != "pixels")


if __name__ == "__main__":
    main()
