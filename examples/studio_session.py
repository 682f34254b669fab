"""The studio's state and rendering, without any user interface: a model, a scene, its edits.

:class:`StudioSession` holds a trained merger+generator, the scene being edited (a held-out
synthetic scene or a label file) with its :class:`~examples.label_edits.EditHistory`, and the
label estimator when there is one. :meth:`StudioSession.render` regenerates the image and every
panel the studio shows; the Gradio app (:mod:`examples.studio_ui`) only lays them out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from examples.label_edits import (
    EditHistory,
    brush_mask,
    drop_label,
    erase,
    object_mask,
    paint_class,
    remove_object,
    restore,
    shift_depth,
)
from examples.label_files import save_label_file
from examples.label_images import MISSING, image_to_rgb, label_to_rgb
from examples.label_insert import PRIMITIVES, CameraPose, insert_primitive
from examples.metrics.controllability import ConsistencyAccumulator
from examples.studies.controllability import SCENE_FIGURES
from examples.studies.scenes import Scene, held_out_scene, label_file_scene
from examples.training.builders import restore_generator
from examples.training.checkpoint import latest_checkpoint
from label_merge.viz import concept_to_rgb

__all__ = [
    "BRUSH_TOOLS",
    "POINT_TOOLS",
    "TOOLS",
    "DEFAULT_RUN",
    "HATCH_GREYS",
    "Rendering",
    "StudioSession",
    "resolve_checkpoint",
    "find_label_estimator",
]

DEFAULT_RUN = Path("runs/asap_tlam")  # the README's main job writes here
BRUSH_TOOLS = ("erase", "restore", "paint class", "push depth", "pull depth")
POINT_TOOLS = ("remove object", *(f"insert {kind}" for kind in PRIMITIVES))
TOOLS = BRUSH_TOOLS + POINT_TOOLS
HATCH_PERIOD = 6  # display pixels per stripe pair of the missing-pixel hatching
# The two greys of the hatching (8-bit), around the grey that the sample grids give missing pixels.
HATCH_GREYS = (round(255 * (MISSING + 0.2)), round(255 * MISSING))


def resolve_checkpoint(path: str | os.PathLike | None) -> Path:
    """A checkpoint file from a file, a run folder (its newest checkpoint) or None (the main job's run).

    Raises:
        FileNotFoundError: Nothing to open, with what to run or pass instead.
    """
    if path is None:
        found = latest_checkpoint(DEFAULT_RUN / "checkpoints")
        if found is None:
            raise FileNotFoundError(
                f"no checkpoint in {DEFAULT_RUN}/checkpoints: train the main job first "
                "(python examples/train_asap_tlam.py), or pass a run folder or a checkpoint file"
            )
        return found
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        found = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(
                f"{path} holds no step_*.safetensors checkpoint (looked in it and its checkpoints/)"
            )
        return found
    raise FileNotFoundError(f"no such checkpoint or run folder: {path}")


def find_label_estimator(config, *, path: str | os.PathLike | None, cache_dir: str | os.PathLike | None, device):
    """The label estimator for the run's images, and a line saying where it came from or why there is none.

    An explicit ``path`` wins. Otherwise, for synthetic runs, the estimator that the studies and
    ``examples/train_label_estimator.py`` cache for this image size (default recipe) is used when
    it has been trained; the studio never trains one itself (minutes of CPU time).

    Returns:
        ``(estimator or None, note)``.

    Raises:
        FileNotFoundError, ValueError: An explicit ``path`` that is missing or not an estimator file.
    """
    from examples.metrics.estimator import load_label_estimator

    if path is not None:
        return load_label_estimator(path, device=device), f"label estimator: {path}"
    if config.data.dataset != "synthetic":
        return None, (
            f"no label estimator: the built-in one reads synthetic scenes, this run is {config.data.dataset}; "
            "pass --estimator FILE"
        )
    from examples.metrics.estimator_training import EstimatorRecipe, cached_estimator_path
    from examples.studies.environment import default_cache_dir
    from examples.training.builders import image_size

    size = image_size(config.data)
    cached = cached_estimator_path(cache_dir or default_cache_dir(), size, EstimatorRecipe())
    if not cached.is_file():
        return None, (
            f"no label estimator for {size[0]}x{size[1]} scenes yet: train it once with "
            f"`python examples/train_label_estimator.py --resolution {size[0]}` (cached for later), "
            "or pass --estimator FILE"
        )
    return load_label_estimator(cached, device=device), f"label estimator: {cached}"


@dataclass
class Rendering:
    """Everything the studio shows for the current labels (pictures are uint8 ``(h, w, 3)``).

    Attributes:
        image: The generated image.
        concept: The concept tensor as RGB (PCA).
        labels: ``{name: picture}``, missing pixels hatched grey.
        contributions: ``{name: picture}`` of each label's share of the concept, or empty.
        contributions_note: Why there are no contribution maps (empty when there are).
        controllability: Rows ``(label, figure, given, missing, higher_is_better)``; NaN where a split has no pixel.
        controllability_note: Where the estimator came from, or why there is none.
        seconds: Time to generate and draw everything.
    """

    image: np.ndarray
    concept: np.ndarray
    labels: dict[str, np.ndarray]
    contributions: dict[str, np.ndarray] = field(default_factory=dict)
    contributions_note: str = ""
    controllability: list[tuple[str, str, float, float, bool]] = field(default_factory=list)
    controllability_note: str = ""
    seconds: float = 0.0


def _to_uint8(rgb: torch.Tensor, scale: int) -> np.ndarray:
    """``(3, H, W)`` in [0, 1] to uint8 ``(H*scale, W*scale, 3)``, pixels repeated (no blur)."""
    big = rgb.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)  # (3, H*s, W*s)
    return (big.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def hatch_missing(picture: np.ndarray, present: torch.Tensor, scale: int) -> np.ndarray:
    """Draw diagonal grey stripes over the missing pixels of an upscaled picture.

    The stripes alternate the two :data:`HATCH_GREYS`, so a missing pixel can never be mistaken
    for a flat value of the label.
    """
    H, W = present.shape
    missing = np.repeat(np.repeat(~present.numpy(), scale, axis=0), scale, axis=1)  # (H*s, W*s)
    rows, cols = np.mgrid[0 : H * scale, 0 : W * scale]
    light = ((rows + cols) // (HATCH_PERIOD // 2)) % 2 == 0
    grey = np.where(light, HATCH_GREYS[0], HATCH_GREYS[1]).astype(np.uint8)
    out = picture.copy()
    out[missing] = grey[missing][:, None]
    return out


def _heat(share: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` in [0, 1] to ``(3, H, W)`` RGB with the viridis colour map."""
    from matplotlib import colormaps

    rgba = colormaps["viridis"](share.clamp(0, 1).numpy())  # (H, W, 4)
    return torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float()


class StudioSession:
    """A trained generator and one scene under edit.

    Args:
        checkpoint: A checkpoint file, a run folder, or None for the main job's newest checkpoint.
        device: ``"cpu"``, ``"cuda"``...; None: a GPU where there is one.
        estimator: A label estimator file; None: the cached one for the run's scenes, if any.
        cache_dir: Where cached estimators live (default ``$LABEL_MERGE_CACHE`` or ``~/.cache/label-merge``).
        scale: Display pixels per label pixel.

    Raises:
        FileNotFoundError, CheckpointError: See :func:`resolve_checkpoint` and
            :func:`examples.training.builders.restore_generator`.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        *,
        device: str | None = None,
        estimator: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        scale: int = 4,
    ) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.checkpoint = resolve_checkpoint(checkpoint)
        self.generator, self.config, self.specs = restore_generator(self.checkpoint, device=self.device)
        self.estimator, self.estimator_note = find_label_estimator(
            self.config, path=estimator, cache_dir=cache_dir, device=self.device
        )
        self.scale = scale
        self.scene: Scene | None = None
        self.history: EditHistory | None = None

    # -- scenes --------------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        """Names of the semantic classes (the synthetic scenes' names, else ``class k``)."""
        spec = self.specs.get("semantic")
        if spec is None or not spec.is_categorical:
            return []
        if self.config.data.dataset == "synthetic":
            from examples.datasets.procedural import CLASS_NAMES

            if len(CLASS_NAMES) == spec.num_classes:
                return list(CLASS_NAMES)
        return [f"class {k}" for k in range(spec.num_classes)]

    def load_held_out(self, index: int) -> str:
        """Edit held-out scene ``index`` of the run's dataset; returns its description."""
        return self._load(held_out_scene(self.config, int(index)))

    def load_label_file(self, path: str | os.PathLike) -> str:
        """Edit the scene of a label file; returns its description."""
        return self._load(label_file_scene(path, self.specs))

    def _load(self, scene: Scene) -> str:
        self.scene = scene
        self.history = EditHistory(scene["labels"], scene["masks"])
        return scene["source"]

    def _require_scene(self) -> EditHistory:
        if self.history is None:
            raise ValueError("no scene is loaded: load a held-out scene or a label file first")
        return self.history

    @property
    def camera(self) -> CameraPose | None:
        meta = (self.scene or {}).get("meta") or {}
        if "intrinsics" not in meta or "camera_to_world" not in meta:
            return None
        return CameraPose(np.asarray(meta["intrinsics"]), np.asarray(meta["camera_to_world"]))

    # -- edits ---------------------------------------------------------------------------------

    def apply(
        self,
        tool: str,
        label: str,
        point: tuple[int, int],
        *,
        radius: float = 3.0,
        class_name: str | None = None,
        depth_step: float = 0.5,
        object_size: float = 0.6,
    ) -> str:
        """Apply ``tool`` at label pixel ``point`` ``(row, col)`` of panel ``label``; returns what it did.

        Brush tools act on the disc of ``radius`` pixels: ``erase``/``restore`` on ``label``,
        ``paint class`` on the semantic map, ``push depth``/``pull depth`` on depth by
        ``depth_step`` metres. Point tools act on the object under the point or place a new one.

        Raises:
            ValueError: An unknown tool, no scene, or an edit the scene cannot take.
        """
        history = self._require_scene()
        labels, masks = history.current
        size = tuple(next(iter(labels.values())).shape[-2:])
        brush = brush_mask(size, point, radius)
        where = f"at ({point[0]}, {point[1]})"
        if tool == "erase":
            edited, text = erase(labels, masks, label, brush), f"erased {label} {where}"
        elif tool == "restore":
            original_labels, original_masks = history.original
            edited = restore(
                labels, masks, label, brush, original_labels=original_labels, original_masks=original_masks
            )
            text = f"restored {label} {where}"
        elif tool == "paint class":
            names = self.class_names
            if class_name not in names:
                raise ValueError(f"choose a class to paint from {names}, got {class_name!r}")
            edited = paint_class(labels, masks, brush, names.index(class_name))
            text = f"painted {class_name} {where}"
        elif tool in ("push depth", "pull depth"):
            metres = depth_step if tool == "push depth" else -depth_step
            edited, text = shift_depth(labels, masks, brush, metres), f"moved depth by {metres:+.2f} m {where}"
        elif tool == "remove object":
            region = object_mask(point, regions=self.scene.get("regions"), semantic=labels.get("semantic"))
            edited, text = remove_object(labels, masks, region), f"removed the object {where} ({int(region.sum())} px)"
        elif tool.startswith("insert ") and tool.split(" ", 1)[1] in PRIMITIVES:
            kind = tool.split(" ", 1)[1]
            new_labels, new_masks, visible = insert_primitive(
                labels, masks, kind, point, size=object_size, camera=self.camera
            )
            edited, text = (new_labels, new_masks), f"inserted a {kind} {where} ({int(visible.sum())} px)"
        else:
            raise ValueError(f"unknown tool {tool!r}; the tools are {list(TOOLS)}")
        history.apply(*edited, description=text)
        return text

    def drop(self, label: str) -> str:
        """Make a whole label missing; returns what it did."""
        history = self._require_scene()
        history.apply(*drop_label(*history.current, label), description=f"dropped {label}")
        return f"dropped {label}"

    def undo(self) -> str:
        undone = self._require_scene().undo()
        return "nothing to undo" if undone is None else f"undid: {undone}"

    def reset(self) -> str:
        self._require_scene().reset()
        return "back to the scene as loaded"

    # -- output --------------------------------------------------------------------------------

    def _batch(self, labels: Mapping, masks: Mapping) -> tuple[dict, dict]:
        """The labels the model takes, batched ``(1, ...)`` on its device."""
        names = [name for name in self.specs if name in labels]
        return (
            {name: labels[name][None].to(self.device) for name in names},
            {name: masks[name][None].to(self.device) for name in names},
        )

    @torch.no_grad()
    def render(self) -> Rendering:
        """Generate the image of the current labels and draw every panel."""
        started = time.perf_counter()
        history = self._require_scene()
        labels, masks = history.current
        batch_labels, batch_masks = self._batch(labels, masks)
        image, concept = self.generator(batch_labels, batch_masks)  # (1, 3, H, W), (1, C, H, W)
        rendering = Rendering(
            image=_to_uint8(image_to_rgb(image)[0], self.scale),
            concept=_to_uint8(concept_to_rgb(concept.float()).cpu()[0], self.scale),
            labels=self._label_pictures(labels, masks),
        )
        self._contributions(rendering, batch_labels, batch_masks)
        self._controllability(rendering, image, labels, masks)
        rendering.seconds = time.perf_counter() - started
        return rendering

    def _label_pictures(self, labels: Mapping, masks: Mapping) -> dict[str, np.ndarray]:
        pictures = {}
        for name, spec in self.specs.items():
            if name not in labels:
                continue
            present = masks[name]
            if spec.is_categorical and spec.ignore_index is not None:
                present = present & (labels[name] != spec.ignore_index)
            rgb = label_to_rgb(name, spec, labels[name][None], present[None])[0]  # (3, H, W)
            pictures[name] = hatch_missing(_to_uint8(rgb, self.scale), present.cpu(), self.scale)
        return pictures

    def _contributions(self, rendering: Rendering, batch_labels: dict, batch_masks: dict) -> None:
        merger = self.generator.merger
        if not hasattr(merger, "contributions"):
            rendering.contributions_note = (
                f"{type(merger).__name__} has no attention between labels, so it has no per-label "
                "contribution maps (only TLAM does)"
            )
            return
        known = {k: v for k, v in batch_labels.items() if k in merger.specs}
        shares = merger.contributions(known, {k: v for k, v in batch_masks.items() if k in known})  # (1, N, H, W)
        for index, name in enumerate(merger.specs):
            rendering.contributions[name] = _to_uint8(_heat(shares[0, index].cpu()), self.scale)

    def _controllability(self, rendering: Rendering, image: torch.Tensor, labels: Mapping, masks: Mapping) -> None:
        """Each label read back from the image, on the pixels where it was given and where it was not.

        Given pixels are scored against the edited label; missing pixels against the scene as
        loaded (the truth the generator was not told), where it exists.
        """
        rendering.controllability_note = self.estimator_note
        if self.estimator is None:
            return
        original_labels, original_masks = self._require_scene().original
        truth, exists = {}, {}
        for name in labels:
            if name in original_labels:
                truth[name] = torch.where(masks[name].expand_as(labels[name]), labels[name], original_labels[name])
                exists[name] = masks[name] | original_masks[name]
            else:
                truth[name], exists[name] = labels[name], masks[name]
        spec = self.specs.get("semantic")
        accumulator = ConsistencyAccumulator(
            self.estimator,
            num_classes=spec.num_classes if spec is not None else None,
            ignore_index=spec.ignore_index if spec is not None else None,
        )
        batch = {name: value[None].to(self.device) for name, value in truth.items()}
        accumulator.update(
            image,
            batch,
            {name: masks[name][None].to(self.device) for name in truth},
            label_present={name: value[None].to(self.device) for name, value in exists.items()},
        )
        from examples.metrics.controllability import HIGHER_IS_BETTER

        result = accumulator.compute()
        for name, figures in SCENE_FIGURES.items():
            for figure in figures if name in result else ():
                given = result[name].get("given", {}).get(figure, float("nan"))
                missing = result[name].get("missing", {}).get(figure, float("nan"))
                rendering.controllability.append((name, figure, float(given), float(missing), HIGHER_IS_BETTER[figure]))

    def export(self, folder: str | os.PathLike) -> list[Path]:
        """Write the edited labels (a label file) and the generated image into ``folder``."""
        from PIL import Image

        labels, masks = self._require_scene().current
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        label_path, image_path = folder / "edited_labels.npz", folder / "generated.png"
        save_label_file(label_path, labels, masks)
        with torch.no_grad():
            image, _ = self.generator(*self._batch(labels, masks))
        Image.fromarray(_to_uint8(image_to_rgb(image)[0], 1)).save(image_path)
        return [label_path, image_path]
