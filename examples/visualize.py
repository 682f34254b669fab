"""Concept visualisation (paper Fig. 7): the concept tensor as RGB (PCA) and per-label contributions.

    python examples/visualize.py CHECKPOINT                         # held-out scene 0
    python examples/visualize.py CHECKPOINT --index 0 4 7 --sparsity 0.5 --out concept.png
    python examples/visualize.py CHECKPOINT --labels scene.npz other.npz

For each scene, one row shows the real image (when known), the generated image, the concept
tensor projected on its first three principal components (one PCA over all scenes shown, so
colours compare across rows; :func:`label_merge.viz.concept_to_rgb`) and every input label
(missing pixels grey). For a TLAM model a second row shows how much each label contributes at
each pixel (the attention its token receives, :meth:`label_merge.TLAM.contributions`; each
pixel's contributions sum to 1 over its present labels) and which label dominates. Writes the
PNG (``--out``) and, next to it, a JSON with each label's mean contribution per scene.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402

import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from examples.label_images import class_palette, image_to_rgb, label_to_rgb  # noqa: E402
from examples.studies.conditions import LabelCondition, apply_condition  # noqa: E402
from examples.studies.environment import write_json  # noqa: E402
from examples.studies.plots import plt, save_figure  # noqa: E402
from examples.studies.scenes import held_out_scene, label_file_scene  # noqa: E402
from examples.training.builders import restore_generator  # noqa: E402
from examples.training.checkpoint import CheckpointError  # noqa: E402
from label_merge import TLAM  # noqa: E402
from label_merge.viz import concept_to_rgb  # noqa: E402

__all__ = ["visualize", "main"]


def _hwc(rgb: torch.Tensor):
    """``(3, H, W)`` in [0, 1] to an ``(H, W, 3)`` array for imshow."""
    return rgb.permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def visualize(
    checkpoint: str | Path,
    out: str | Path,
    *,
    indices: list[int] | None = None,
    label_files: list[str] | None = None,
    sparsity: float = 0.0,
    seed: int = 0,
    layer: int | None = None,
    device: str = "cpu",
) -> dict:
    """Draw the concept figure for some scenes and return each label's mean contribution.

    Args:
        checkpoint: A trained checkpoint.
        out: The PNG to write (a JSON with the same stem goes next to it).
        indices: Held-out scenes to show (default ``[0]``), unless ``label_files``.
        label_files: Label files to show instead.
        sparsity: Region sparsity applied to the held-out scenes' labels (seeded per scene).
        seed: Seed of that sparsity.
        layer: The transformer block whose attention gives the contributions (None: mean of all).
        device: Where the model runs.

    Returns:
        ``{"scenes": [...], "mean_contribution": [{label: share}] or None, ...}``.

    Raises:
        ValueError: Sparsity for label files (they have no region ids), scenes of different sizes.
        FileNotFoundError: Missing checkpoint or label files.
    """
    generator, config, specs = restore_generator(checkpoint, device=device)
    if label_files:
        if sparsity:
            raise ValueError(
                "--sparsity needs region ids, which label files do not have; make the files sparse instead"
            )
        scenes = [label_file_scene(path, specs) for path in label_files]
    else:
        scenes = [held_out_scene(config, index) for index in (indices or [0])]
    names = [name for name in specs if any(name in s["labels"] for s in scenes)]
    sizes = {tuple(next(iter(s["labels"].values())).shape[-2:]) for s in scenes}
    if len(sizes) > 1:
        raise ValueError(f"the scenes differ in size ({sorted(sizes)}); show them one at a time")
    for s in scenes:  # a label a scene lacks is missing everywhere
        for name in names:
            if name not in s["labels"]:
                other = next(o["labels"][name] for o in scenes if name in o["labels"])
                s["labels"][name] = torch.zeros_like(other)
                s["masks"][name] = torch.zeros(other.shape[-2:], dtype=torch.bool)
    labels = {name: torch.stack([s["labels"][name] for s in scenes]).to(device) for name in names}
    masks = {name: torch.stack([s["masks"][name] for s in scenes]).to(device) for name in names}
    if sparsity:
        regions = torch.stack([s["regions"] for s in scenes]).to(device)
        masks = apply_condition(
            masks, regions, LabelCondition(sparsity=sparsity, seed=seed), labels=labels, first_position=0
        )
    images, concept = generator(labels, masks)
    concept_rgb = concept_to_rgb(concept.float()).cpu()  # (B, 3, H, W), one PCA over all scenes
    merger = generator.merger
    contributions = None
    if isinstance(merger, TLAM):
        known = {k: v for k, v in labels.items() if k in merger.specs}
        contributions = merger.contributions(known, {k: masks[k] for k in known}, layer=layer).cpu()  # (B, N, H, W)
    token_names = list(merger.specs) if contributions is not None else []

    B = len(scenes)
    columns = 3 + len(names)
    rows_per_scene = 2 if contributions is not None else 1
    figure, axes = plt.subplots(
        B * rows_per_scene, columns, figsize=(1.6 * columns, 1.7 * B * rows_per_scene), squeeze=False
    )
    for ax in axes.flat:
        ax.set_axis_off()
    generated = image_to_rgb(images)
    for b, scene in enumerate(scenes):
        row = axes[b * rows_per_scene]
        if scene["image"] is not None:
            row[0].imshow(_hwc(image_to_rgb(scene["image"][None])[0]))
            row[0].set_title("real", fontsize=8)
        row[1].imshow(_hwc(generated[b]))
        row[1].set_title("generated", fontsize=8)
        row[2].imshow(_hwc(concept_rgb[b]))
        row[2].set_title("concept (PCA)", fontsize=8)
        for j, name in enumerate(names):
            rgb = label_to_rgb(name, specs[name], labels[name][b : b + 1].cpu(), masks[name][b : b + 1].cpu())[0]
            row[3 + j].imshow(_hwc(rgb))
            row[3 + j].set_title(name, fontsize=8)
        if contributions is not None:
            lower = axes[b * rows_per_scene + 1]
            present_any = contributions[b].sum(0) > 0  # (H, W)
            for j, name in enumerate(token_names):
                lower[3 + names.index(name)].imshow(contributions[b, j].numpy(), vmin=0, vmax=1, cmap="viridis")
                lower[3 + names.index(name)].set_title(f"{name} share", fontsize=8)
            dominant = contributions[b].argmax(0).float().masked_fill(~present_any, float("nan"))  # (H, W)
            palette = class_palette(len(token_names)).numpy()
            lower[2].imshow(dominant.numpy(), cmap=ListedColormap(palette), vmin=-0.5, vmax=len(token_names) - 0.5)
            lower[2].set_title("dominant label", fontsize=8)
            handles = [plt.Rectangle((0, 0), 1, 1, color=palette[j]) for j in range(len(token_names))]
            lower[1].legend(handles, token_names, loc="center", fontsize=6, frameon=False)
    out = Path(out)
    save_figure(figure, out)
    summary = {
        "checkpoint": str(checkpoint),
        "scenes": [s["source"] for s in scenes],
        "sparsity": sparsity,
        "merger": config.model.merger,
        "layer": layer,
        "mean_contribution": None,
    }
    if contributions is not None:
        present = contributions.sum(1, keepdim=True) > 0  # (B, 1, H, W): pixels with any label
        summary["mean_contribution"] = [
            {name: float(contributions[b, j][present[b, 0]].mean()) for j, name in enumerate(token_names)}
            for b in range(B)
        ]
    write_json(out.with_suffix(".json"), summary)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("checkpoint", help="a checkpoint written by train_asap_tlam.py")
    p.add_argument("--index", type=int, nargs="+", default=[0], help="held-out scenes to show")
    p.add_argument("--labels", nargs="+", help="label files (.npz) to show instead")
    p.add_argument("--sparsity", type=float, default=0.0, help="region sparsity applied to held-out scenes")
    p.add_argument("--seed", type=int, default=0, help="seed of that sparsity")
    p.add_argument("--layer", type=int, help="transformer block for the contributions (default: mean of all)")
    p.add_argument("--out", default="concept.png", help="output PNG")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        summary = visualize(
            args.checkpoint,
            args.out,
            indices=args.index,
            label_files=args.labels,
            sparsity=args.sparsity,
            seed=args.seed,
            layer=args.layer,
            device=args.device,
        )
    except (FileNotFoundError, ValueError, CheckpointError) as err:
        raise SystemExit(f"visualize.py: {err}") from None
    if summary["mean_contribution"] is not None:
        for scene, shares in zip(summary["scenes"], summary["mean_contribution"], strict=True):
            print(f"{scene}: " + ", ".join(f"{name} {share:.2f}" for name, share in shares.items()))
    else:
        print(f"{summary['merger']} has no per-label contributions (TLAM only); drew the concept and labels")
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}")
    return summary


if __name__ == "__main__":
    main()
