"""Generate images from a trained checkpoint and a folder of label files (no real images needed).

    python examples/generate.py runs/asap_tlam/checkpoints/step_00001500.safetensors LABELS/ --out generated/

``LABELS/`` holds one ``.npz`` per image (see :mod:`examples.label_files`; labels may be sparse
or missing). For each file ``NAME.npz`` this writes ``NAME.png``, plus ``grid.png`` with the
labels, the concept (PCA) and the generated image side by side. ``--export-synthetic N DIR``
writes N label files from the synthetic dataset to try it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from examples.label_files import load_label_folder, save_label_file  # noqa: E402
from examples.label_images import image_to_rgb, label_columns, save_grid  # noqa: E402
from examples.training.builders import restore_generator  # noqa: E402
from label_merge.viz import concept_to_rgb  # noqa: E402


def export_synthetic(count: int, folder: Path, *, resolution: int, seed: int) -> None:
    """Write ``count`` synthetic scenes' labels (not their images) as label files."""
    from examples.datasets import SyntheticDataset

    folder.mkdir(parents=True, exist_ok=True)
    dataset = SyntheticDataset(num_samples=count, resolution=resolution, seed=seed)
    for i in range(count):
        sample = dataset[i]
        save_label_file(folder / f"scene_{i:04d}.npz", sample["labels"], sample["masks"])


def _batches(items: list, batch_size: int) -> list[list]:
    """Consecutive batches of label files of one size each (sizes may differ between files)."""
    batches: list[list] = []
    for item in items:
        size = tuple(next(iter(item[1].values())).shape[-2:])
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and tuple(next(iter(last[0][1].values())).shape[-2:]) == size:
            last.append(item)
        else:
            batches.append([item])
    return batches


@torch.no_grad()
def generate(checkpoint: str, labels_dir: str, out: str, *, device: str = "cpu", batch_size: int = 8) -> list[Path]:
    """Generate one PNG per label file, and ``grid.png`` for the first batch; returns the PNGs.

    Files in one batch must hold the same labels (a label missing from a file is missing
    everywhere; give it an all-False mask instead to batch it with others).
    """
    generator, _, specs = restore_generator(checkpoint, device=device)
    items = load_label_folder(labels_dir, specs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, batch in enumerate(tqdm(_batches(items, batch_size), desc="generating", unit="batch")):
        names = {frozenset(labels) for _, labels, _ in batch}
        if len(names) > 1:
            raise ValueError(f"label files {[n for n, _, _ in batch]} hold different labels; use --batch-size 1")
        labels = {k: torch.stack([lab[k] for _, lab, _ in batch]).to(device) for k in batch[0][1]}
        masks = {k: torch.stack([m[k] for _, _, m in batch]).to(device) for k in labels}
        image, concept = generator(labels, masks)
        rgb = image_to_rgb(image)
        for (name, _, _), picture in zip(batch, rgb, strict=True):
            path = out / f"{name}.png"
            Image.fromarray((picture.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
            written.append(path)
        if index == 0:
            columns = label_columns(specs, labels, masks)
            columns += [("concept (PCA)", concept_to_rgb(concept.float()).cpu()), ("generated", rgb)]
            save_grid(out / "grid.png", columns)
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("checkpoint", nargs="?", help="a checkpoint written by train_asap_tlam.py")
    p.add_argument("labels", nargs="?", help="folder of .npz label files")
    p.add_argument("--out", default="generated", help="output folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--export-synthetic", nargs=2, metavar=("N", "DIR"), help="write N synthetic label files and exit")
    p.add_argument("--resolution", type=int, default=64, help="resolution of --export-synthetic")
    p.add_argument("--seed", type=int, default=12345, help="seed of --export-synthetic")
    args = p.parse_args(argv)
    if args.export_synthetic:
        count, folder = args.export_synthetic
        export_synthetic(int(count), Path(folder), resolution=args.resolution, seed=args.seed)
        print(f"wrote {count} label files to {folder}")
        return
    if not args.checkpoint or not args.labels:
        p.error("give a checkpoint and a folder of label files (or --export-synthetic N DIR)")
    written = generate(args.checkpoint, args.labels, args.out, device=args.device, batch_size=args.batch_size)
    print(f"wrote {len(written)} images and grid.png to {args.out}")


if __name__ == "__main__":
    main()
