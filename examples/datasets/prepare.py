"""Precompute derived labels once, so training does not redo them every epoch.

Usage::

    python -m examples.datasets.prepare taskonomy ROOT [--buildings B ...] [--resolution 256]
    python -m examples.datasets.prepare cityscapes ROOT [--split train] [--resolution 256 512]
    python -m examples.datasets.prepare nyu ROOT [--split all] [--resolution 240 320]

Derived labels: Taskonomy region ids (connected components of the semantic map); Cityscapes
depth from disparity, normals and Canny edges; NYU normals and label-boundary edges. They are
written to ``{cache_dir}/{dataset}/{H}x{W}/`` (``cache_dir`` defaults to
``{root}/label_merge_cache``), one atomically written ``.npz`` per sample, and the datasets read
them whenever that folder's ``recipe.json`` matches their parameters. Rerunning skips finished
samples; ``--overwrite`` recomputes everything (needed to replace a cache made with other
parameters).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .base import RealDataset

__all__ = ["PrepareResult", "prepare_cache", "main"]


@dataclass
class PrepareResult:
    """What :func:`prepare_cache` did.

    Attributes:
        folder: The cache folder written.
        written: Samples computed and saved.
        skipped: Samples already cached and kept.
    """

    folder: Path
    written: int
    skipped: int


def prepare_cache(dataset: RealDataset, *, overwrite: bool = False, progress: bool = True) -> PrepareResult:
    """Compute and store every derived label of every sample of ``dataset``.

    Args:
        dataset: A real dataset; its parameters (resolution, Canny thresholds, ...) decide the
            values and the cache folder. All derived labels are stored, whatever ``labels`` it selects.
        overwrite: Recompute samples that are already cached; required when the folder holds a
            cache made with other parameters.
        progress: Show a tqdm progress bar.

    Returns:
        The folder and the counts.

    Raises:
        ValueError: The folder holds a cache made with other parameters and ``overwrite`` is False.

    Example:
        >>> from examples.datasets import NYUDepthV2Dataset
        >>> prepare_cache(NYUDepthV2Dataset("/data/nyu", split="all"))  # doctest: +SKIP
    """
    cache = dataset.cache
    stored = cache.stored_recipe()
    if stored == cache.recipe:
        redo = overwrite  # same parameters: fill in what is missing
    else:
        if stored is not None:
            if not overwrite:
                cache.check_recipe()  # raises, naming the differing parameters
            cache.discard_recipe()
        # An unfinished run with the same parameters can be resumed; anything else is redone.
        redo = overwrite or cache.pending_recipe() != cache.recipe
        cache.write_pending()
    keys = dataset.all_derived_keys()
    written = skipped = 0
    for index in tqdm(range(len(dataset)), desc=f"{dataset.name} derived labels", unit="sample", disable=not progress):
        key = dataset.sample_key(index)
        if not redo and cache.has(key):
            skipped += 1
            continue
        cache.save(key, dataset.compute_derived(index, keys=keys))
        written += 1
    cache.finish()
    return PrepareResult(cache.folder, written, skipped)


def _build_dataset(args: argparse.Namespace) -> RealDataset:
    common = {"cache_dir": args.cache_dir, "use_cache": False}
    res = args.resolution
    if args.dataset == "taskonomy":
        from .taskonomy import TaskonomyDataset

        resolution = 256 if res is None else tuple(res)
        return TaskonomyDataset(args.root, buildings=args.buildings, resolution=resolution, **common)
    if args.dataset == "cityscapes":
        from .cityscapes import CityscapesDataset

        return CityscapesDataset(
            args.root,
            split=args.split or "train",
            resolution=(256, 512) if res is None else tuple(res),
            canny_sigma=args.canny_sigma,
            canny_low=args.canny_low,
            canny_high=args.canny_high,
            normal_window=args.normal_window,
            **common,
        )
    from .nyu import NYUDepthV2Dataset

    return NYUDepthV2Dataset(
        args.root,
        split=args.split or "all",
        resolution=(240, 320) if res is None else tuple(res),
        splits_file=args.splits_file,
        normal_window=args.normal_window,
        **common,
    )


def main(argv: Sequence[str] | None = None) -> PrepareResult:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.datasets.prepare",
        description="Precompute derived labels (normals, edges, depth from disparity, region ids).",
    )
    parser.add_argument("dataset", choices=("taskonomy", "cityscapes", "nyu"))
    parser.add_argument("root", help="dataset root (for nyu: the folder of nyu_depth_v2_labeled.mat, or the file)")
    parser.add_argument("--resolution", type=int, nargs="+", metavar="N", help="output size: H W (or one int, square)")
    parser.add_argument("--split", help="cityscapes: train/val/test (default train); nyu: train/test/all (default all)")
    parser.add_argument("--buildings", nargs="+", help="taskonomy: buildings (default: all found)")
    parser.add_argument("--cache-dir", help="cache root (default: ROOT/label_merge_cache)")
    parser.add_argument("--splits-file", help="nyu: splits.mat (default: next to the .mat)")
    parser.add_argument("--canny-sigma", type=float, default=1.0, help="cityscapes: Canny Gaussian sigma")
    parser.add_argument("--canny-low", type=float, default=0.03, help="cityscapes: Canny low threshold")
    parser.add_argument("--canny-high", type=float, default=0.06, help="cityscapes: Canny high threshold")
    parser.add_argument("--normal-window", type=int, default=5, help="cityscapes/nyu: plane-fit window for normals")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute cached samples (and replace a cache made with other parameters)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.resolution is not None and len(args.resolution) not in (1, 2):
        parser.error("--resolution takes H W (or one int for a square)")
    if args.resolution is not None and len(args.resolution) == 1:
        args.resolution = [args.resolution[0], args.resolution[0]]
    result = prepare_cache(_build_dataset(args), overwrite=args.overwrite, progress=not args.no_progress)
    print(f"{result.folder}: {result.written} written, {result.skipped} already present")
    return result


if __name__ == "__main__":
    main()
