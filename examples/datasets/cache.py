"""On-disk cache of derived labels (normals, edges, depth from disparity, region ids).

``python -m examples.datasets.prepare`` fills it once; the datasets read from it when a file is
present and compute on the fly otherwise. Layout::

    {cache_dir}/{dataset}/{H}x{W}/recipe.json       the parameters the files were made with
    {cache_dir}/{dataset}/{H}x{W}/{sample key}.npz  one compressed file per sample

``cache_dir`` defaults to ``{root}/label_merge_cache``. Every file is written atomically (a
temporary file renamed into place), so an interrupted ``prepare`` never leaves a half-written file.
A folder is used only once ``recipe.json`` exists: ``prepare`` writes ``recipe.pending.json`` while
it fills a new folder and renames it to ``recipe.json`` when done (a rerun resumes). A cache made
with other parameters (a different Canny threshold, say) is refused with an error rather than
silently mixed with on-the-fly results.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from .io import atomic_save_npz, atomic_write_bytes, load_npz

__all__ = ["DerivedCache", "CACHE_DIRNAME"]

CACHE_DIRNAME = "label_merge_cache"


class DerivedCache:
    """Per-sample ``.npz`` files of derived labels for one dataset at one resolution.

    Args:
        cache_dir: The cache root (``{root}/label_merge_cache`` by default in the datasets).
        dataset: Dataset name, e.g. ``"cityscapes"``.
        size: Output ``(H, W)``.
        recipe: JSON-serialisable parameters that determine the derived values.

    Example:
        >>> cache = DerivedCache("/data/cityscapes/label_merge_cache", dataset="cityscapes",
        ...                      size=(256, 512), recipe={"version": 1})  # doctest: +SKIP
        >>> cache.load("train/aachen/aachen_000000_000019", keys=["edge"])  # doctest: +SKIP
    """

    def __init__(self, cache_dir: str | os.PathLike, *, dataset: str, size: tuple[int, int], recipe: Mapping) -> None:
        self.folder = Path(cache_dir) / dataset / f"{size[0]}x{size[1]}"
        # Round-trip through JSON so tuples and lists compare equal to what is read back.
        self.recipe = json.loads(json.dumps(dict(recipe), sort_keys=True))

    @property
    def recipe_path(self) -> Path:
        return self.folder / "recipe.json"

    @property
    def pending_path(self) -> Path:
        return self.folder / "recipe.pending.json"

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    @staticmethod
    def _read_recipe(path: Path) -> dict | None:
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"could not parse {path}: {e}") from e

    def stored_recipe(self) -> dict | None:
        """The finished folder's recipe, or None when ``recipe.json`` does not exist."""
        return self._read_recipe(self.recipe_path)

    def pending_recipe(self) -> dict | None:
        """The recipe of an unfinished ``prepare`` run, or None."""
        return self._read_recipe(self.pending_path)

    def check_recipe(self) -> bool:
        """Whether the folder is a finished cache for this recipe.

        Returns:
            True when ``recipe.json`` matches, False when it does not exist (nothing to use).

        Raises:
            ValueError: ``recipe.json`` differs from this recipe; the message names the file and
                the differing parameters.
        """
        stored = self.stored_recipe()
        if stored is None:
            return False
        if stored == self.recipe:
            return True
        keys = sorted(set(stored) | set(self.recipe))
        diff = {k: (stored.get(k), self.recipe.get(k)) for k in keys if stored.get(k) != self.recipe.get(k)}
        raise ValueError(
            f"{self.recipe_path}: the cached derived labels were made with other parameters "
            f"(parameter: (cached, requested)) {diff}. Re-run `python -m examples.datasets.prepare` with these "
            f"options and --overwrite, pass another cache_dir, or pass use_cache=False."
        )

    def write_pending(self) -> None:
        atomic_write_bytes(self.pending_path, json.dumps(self.recipe, indent=2, sort_keys=True).encode("utf-8"))

    def finish(self) -> None:
        """Mark the folder complete: ``recipe.pending.json`` becomes ``recipe.json``."""
        if self.pending_path.is_file():
            os.replace(self.pending_path, self.recipe_path)
        elif self.stored_recipe() != self.recipe:
            atomic_write_bytes(self.recipe_path, json.dumps(self.recipe, indent=2, sort_keys=True).encode("utf-8"))

    def discard_recipe(self) -> None:
        """Forget the finished recipe (before refilling the folder with other parameters)."""
        if self.recipe_path.is_file():
            self.recipe_path.unlink()

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def load(self, key: str, *, keys: Iterable[str]) -> dict[str, np.ndarray] | None:
        """The arrays ``keys`` of sample ``key``, or None when the sample is not cached.

        Raises:
            ValueError: The file exists but is corrupt or lacks a key (the message names it).
        """
        path = self.path(key)
        if not path.is_file():
            return None
        return load_npz(path, keys=keys)

    def save(self, key: str, arrays: Mapping[str, np.ndarray]) -> Path:
        path = self.path(key)
        atomic_save_npz(path, arrays)
        return path
