"""Geometric image editing (paper Sec. 4.6, Figs. 10-11): remove or insert an object by editing labels.

    python examples/edit.py remove CHECKPOINT --index 3                    # the largest object of held-out scene 3
    python examples/edit.py remove CHECKPOINT --index 3 --region 12        # region id 12 of that scene
    python examples/edit.py remove CHECKPOINT --labels scene.npz --mask hole.png
    python examples/edit.py insert CHECKPOINT --index 3 --from-index 8     # paste scene 8's largest object
    python examples/edit.py insert CHECKPOINT --index 3 --from-index 8 --region 9 --offset 4 -6

Removal makes every label missing inside the object's mask (not filled from the background:
see :mod:`examples.studies.editing` for why); insertion pastes every label of an object of another
scene inside its mask, optionally moved by ``--offset DY DX`` pixels. Scenes come from the
held-out split of the checkpoint's configuration (``--index``) or from label files
(``--labels``, with ``--mask`` since a label file has no region ids). Writes into ``--out``:
``before.png`` and ``after.png`` (generated), ``labels_before.npz`` and ``labels_after.npz``
(label files, see :mod:`examples.label_files`), ``edit_mask.png``, ``comparison.png`` (labels,
concept and image, before and after) and ``edit.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from examples.label_files import save_label_file  # noqa: E402
from examples.label_images import image_to_rgb, label_columns, save_grid  # noqa: E402
from examples.studies.editing import object_regions, paste_labels, region_mask, remove_labels  # noqa: E402
from examples.studies.environment import write_json  # noqa: E402
from examples.studies.scenes import Scene, held_out_scene, label_file_scene, load_mask_file  # noqa: E402
from examples.training.builders import restore_generator  # noqa: E402
from examples.training.checkpoint import CheckpointError  # noqa: E402
from label_merge.viz import concept_to_rgb  # noqa: E402

__all__ = ["edit", "main"]

OBJECT_CLASSES = ("sphere", "box", "cylinder")  # the synthetic scenes' movable objects
FILES = ("before.png", "after.png", "labels_before.npz", "labels_after.npz", "edit_mask.png", "comparison.png")


def _object_mask(scene: Scene, region: str, mask_file: str | None, *, config) -> tuple[torch.Tensor, dict]:
    """The pixels of the object to edit, and how they were chosen."""
    size = tuple(next(iter(scene["labels"].values())).shape[-2:])
    if mask_file is not None:
        return load_mask_file(mask_file, size), {"mask_file": str(mask_file)}
    if scene["regions"] is None:
        raise ValueError(f"{scene['source']} has no region ids: give --mask FILE")
    if region == "largest-object":
        if config.data.dataset != "synthetic" or "semantic" not in scene["labels"]:
            raise ValueError("--region largest-object needs a synthetic scene with its semantic map; give --region ID")
        from examples.datasets.procedural import CLASS_IDS

        found = object_regions(scene["regions"], scene["labels"]["semantic"], [CLASS_IDS[c] for c in OBJECT_CLASSES])
        if not found:
            raise ValueError(f"{scene['source']} shows no object ({', '.join(OBJECT_CLASSES)}); choose another scene")
        region_id = found[0][0]
    else:
        try:
            region_id = int(region)
        except ValueError:
            raise ValueError(f"--region must be a region id or 'largest-object', got {region!r}") from None
    return region_mask(scene["regions"], region_id), {"region": region_id}


def _complete(scene: dict, like: dict) -> dict:
    """``scene`` with every label of ``like`` it lacks added as missing everywhere."""
    labels, masks = dict(scene["labels"]), dict(scene["masks"])
    for name, value in like["labels"].items():
        if name not in labels:
            labels[name] = torch.zeros_like(value)
            masks[name] = torch.zeros(value.shape[-2:], dtype=torch.bool)
    return {"labels": labels, "masks": masks}


def _batch(scenes: list[dict], names) -> tuple[dict, dict]:
    labels = {name: torch.stack([s["labels"][name] for s in scenes]) for name in names}
    masks = {name: torch.stack([s["masks"][name] for s in scenes]) for name in names}
    return labels, masks


def _upscale(rgb: torch.Tensor, factor: int) -> torch.Tensor:
    return rgb.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)  # (B, 3, H*f, W*f)


def _save_png(path: Path, rgb: torch.Tensor) -> None:
    """Save ``(3, H, W)`` in [0, 1] as an 8-bit PNG."""
    array = (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)


@torch.no_grad()
def edit(
    operation: str,
    checkpoint: str | Path,
    out: str | Path,
    *,
    index: int = 0,
    labels_file: str | None = None,
    region: str = "largest-object",
    mask_file: str | None = None,
    from_index: int | None = None,
    from_labels_file: str | None = None,
    offset: tuple[int, int] = (0, 0),
    device: str = "cpu",
) -> dict:
    """Edit one scene's labels and render it before and after.

    Args:
        operation: ``remove`` or ``insert``.
        checkpoint: A trained checkpoint.
        out: Output folder.
        index: Held-out scene to edit (unless ``labels_file``).
        labels_file: A label file to edit instead.
        region: Region id of the object (removal: in the edited scene; insertion: in the source
            scene), or ``largest-object`` (synthetic scenes).
        mask_file: The object's mask instead of a region (``.npy`` or image, non-zero inside).
        from_index: Insertion: held-out scene the object comes from.
        from_labels_file: Insertion: label file the object comes from (with ``mask_file``).
        offset: Insertion: ``(dy, dx)`` pixels to move the object by.
        device: Where the model runs.

    Returns:
        The description written to ``edit.json``.

    Raises:
        ValueError: Bad arguments, unknown regions, masks of the wrong size.
        FileNotFoundError: Missing checkpoint, label or mask files.
    """
    if operation not in ("remove", "insert"):
        raise ValueError(f"operation must be 'remove' or 'insert', got {operation!r}")
    generator, config, specs = restore_generator(checkpoint, device=device)
    scene = label_file_scene(labels_file, specs) if labels_file else held_out_scene(config, index)
    record = {"operation": operation, "checkpoint": str(checkpoint), "scene": scene["source"]}
    if operation == "remove":
        mask, chosen = _object_mask(scene, region, mask_file, config=config)
        labels, masks = remove_labels(scene["labels"], scene["masks"], mask)
        record.update(chosen, fill="missing: every label is marked missing inside the mask (values zeroed)")
    else:
        if from_labels_file is not None:
            if mask_file is None:
                raise ValueError("--from-labels needs --mask (the object's pixels in that scene)")
            source = label_file_scene(from_labels_file, specs)
        elif from_index is not None:
            source = held_out_scene(config, from_index)
        else:
            raise ValueError("insert needs --from-index or --from-labels: the scene the object comes from")
        source_mask, chosen = _object_mask(source, region, mask_file, config=config)
        labels, masks, mask = paste_labels(
            scene["labels"], scene["masks"], source["labels"], source["masks"], source_mask, offset=tuple(offset)
        )
        record.update({f"source_{k}": v for k, v in chosen.items()}, source=source["source"], offset=list(offset))
    names = [name for name in specs if name in labels]  # the edit keeps every label of the scene
    before = {"labels": dict(scene["labels"]), "masks": dict(scene["masks"])}
    after = {"labels": labels, "masks": masks}
    batch_labels, batch_masks = _batch([_complete(before, after), after], names)
    batch_labels = {k: v.to(device) for k, v in batch_labels.items()}
    batch_masks = {k: v.to(device) for k, v in batch_masks.items()}
    images, concept = generator(batch_labels, batch_masks)
    images = image_to_rgb(images)  # (2, 3, H, W) in [0, 1]

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_label_file(out / "labels_before.npz", before["labels"], before["masks"])
    save_label_file(out / "labels_after.npz", after["labels"], after["masks"])
    _save_png(out / "before.png", images[0])
    _save_png(out / "after.png", images[1])
    Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(out / "edit_mask.png")
    columns = label_columns(specs, batch_labels, batch_masks)
    columns += [("concept (PCA)", concept_to_rgb(concept.float()).cpu()), ("generated", images)]
    factor = max(1, 128 // images.shape[-2])
    save_grid(out / "comparison.png", [(title, _upscale(rgb, factor)) for title, rgb in columns])
    inside = mask.to(images.device)
    change = (images[1] - images[0]).abs().mean(dim=0)  # (H, W)
    record.update(
        pixels=int(mask.sum()),
        labels=names,
        mean_image_change_inside=float(change[inside].mean()),
        mean_image_change_outside=float(change[~inside].mean()) if bool((~inside).any()) else None,
        files=[*FILES, "edit.json"],
    )
    write_json(out / "edit.json", record)
    return record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="operation", required=True)
    for name, text in (
        ("remove", "remove an object: its labels become missing"),
        ("insert", "insert an object: paste its labels from another scene"),
    ):
        s = sub.add_parser(name, help=text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        s.add_argument("checkpoint", help="a checkpoint written by train_asap_tlam.py")
        s.add_argument("--index", type=int, default=0, help="held-out scene to edit")
        s.add_argument("--labels", help="a label file (.npz) to edit instead of a held-out scene")
        s.add_argument("--region", default="largest-object", help="region id of the object, or largest-object")
        s.add_argument("--mask", help="the object's mask (.npy or image, non-zero inside) instead of --region")
        s.add_argument("--out", default=f"edits/{name}", help="output folder")
        s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
        if name == "insert":
            s.add_argument("--from-index", type=int, help="held-out scene the object comes from")
            s.add_argument("--from-labels", help="label file the object comes from (with --mask)")
            s.add_argument(
                "--offset",
                type=int,
                nargs=2,
                default=[0, 0],
                metavar=("DY", "DX"),
                help="move the object down/right by this many pixels",
            )
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        record = edit(
            args.operation,
            args.checkpoint,
            args.out,
            index=args.index,
            labels_file=args.labels,
            region=args.region,
            mask_file=args.mask,
            from_index=getattr(args, "from_index", None),
            from_labels_file=getattr(args, "from_labels", None),
            offset=tuple(getattr(args, "offset", (0, 0))),
            device=args.device,
        )
    except (FileNotFoundError, ValueError, CheckpointError) as err:
        raise SystemExit(f"edit.py: {err}") from None
    outside = record["mean_image_change_outside"]
    print(
        f"{record['operation']}: {record['pixels']} pixels; mean image change inside the mask "
        f"{record['mean_image_change_inside']:.3f}, outside " + ("-" if outside is None else f"{outside:.3f}")
    )
    print(f"wrote {', '.join(record['files'])} to {args.out}")
    return record


if __name__ == "__main__":
    main()
