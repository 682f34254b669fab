"""The labels a model is evaluated with: seeded region sparsity and removed labels.

Evaluation sparsity must be the same for every model compared (otherwise one model gets easier
masks than another) and must not depend on the batch size. So each sample draws its region
dropout from its own generator, seeded by ``(seed, position of the sample in the evaluation set)``:
sample 17 loses the same regions whether it is evaluated in batches of 4 or 64, by TLAM or CLAM.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from label_merge.sparsity import region_dropout

__all__ = ["LabelCondition", "sample_generator", "apply_condition"]


@dataclass(frozen=True)
class LabelCondition:
    """How the labels are degraded before they reach the model.

    Attributes:
        sparsity: Region dropout probability ``S`` in [0, 1] (paper Sec. 4): for every sample,
            region and label independently, the label is dropped in the whole region.
        seed: Seed of the region dropout (with the sample's position in the evaluation set).
        drop_labels: Labels removed entirely (missing at every pixel).

    Raises:
        ValueError: ``sparsity`` outside [0, 1], a negative seed, or a label listed twice.

    Example:
        >>> LabelCondition(sparsity=0.5, drop_labels=("edge",)).describe()
        'sparsity 0.5 (seed 0), without edge'
    """

    sparsity: float = 0.0
    seed: int = 0
    drop_labels: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise ValueError(f"sparsity must be a number in [0, 1], got {self.sparsity!r}")
        if not 0.0 <= float(self.sparsity) <= 1.0:
            raise ValueError(f"sparsity must be in [0, 1], got {self.sparsity}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"the sparsity seed must be a non-negative int, got {self.seed!r}")
        object.__setattr__(self, "drop_labels", tuple(self.drop_labels))
        if len(set(self.drop_labels)) != len(self.drop_labels):
            raise ValueError(f"a label is removed twice: {list(self.drop_labels)}")

    def describe(self) -> str:
        """A short human-readable description."""
        parts = [f"sparsity {self.sparsity:g} (seed {self.seed})" if self.sparsity else "dense"]
        if self.drop_labels:
            parts.append("without " + ", ".join(self.drop_labels))
        return ", ".join(parts)

    def check_labels(self, names: Iterable[str]) -> None:
        """Raise ValueError if a removed label is not one of ``names`` (the model's labels)."""
        names = list(names)
        unknown = [name for name in self.drop_labels if name not in names]
        if unknown:
            raise ValueError(f"cannot remove label(s) {unknown}: the model's labels are {names}")


def sample_generator(seed: int, position: int) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, position)``.

    Example:
        >>> a, b = sample_generator(0, 3), sample_generator(0, 3)
        >>> torch.equal(torch.rand(2, generator=a), torch.rand(2, generator=b))
        True
    """
    state = np.random.SeedSequence([seed, position]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] % (2**63)))


def apply_condition(
    masks: Mapping[str, torch.Tensor],
    regions: torch.Tensor | None,
    condition: LabelCondition,
    *,
    labels: Mapping[str, torch.Tensor],
    first_position: int,
) -> dict[str, torch.Tensor]:
    """The masks a batch is evaluated with.

    A removed label gets an all-False mask rather than being deleted from the batch: the
    mergers treat both the same (design: "a label absent from labels is missing at every
    pixel"), and the semantics-only model, which has no other label, still gets an input.

    Args:
        masks: ``{name: bool (B, H, W)}`` of the batch (labels without an entry are dense).
        regions: Integer ``(B, H, W)`` region ids, needed when ``condition.sparsity > 0``.
        condition: The sparsity and removed labels.
        labels: ``{name: tensor}`` of the batch (every label gets a mask in the result).
        first_position: Position of the batch's first sample in the evaluation set.

    Returns:
        ``{name: bool (B, H, W)}`` for every label of ``labels``.

    Raises:
        ValueError: Sparsity without region ids, or a removed label the batch does not have.

    Example:
        >>> labels = {"depth": torch.rand(2, 1, 4, 4), "edge": torch.rand(2, 1, 4, 4)}
        >>> out = apply_condition({}, None, LabelCondition(drop_labels=("edge",)), labels=labels, first_position=0)
        >>> bool(out["depth"].all()), bool(out["edge"].any())
        (True, False)
    """
    condition.check_labels(labels)
    full = {}
    for name, value in labels.items():
        shape = (value.shape[0], *value.shape[-2:])  # (B, H, W)
        mask = masks.get(name)
        full[name] = torch.ones(shape, dtype=torch.bool, device=value.device) if mask is None else mask.reshape(shape)
    if condition.sparsity > 0:
        if regions is None:
            raise ValueError("region sparsity needs the samples' region ids (batch['regions'])")
        per_sample = []
        for b in range(regions.shape[0]):
            generator = sample_generator(condition.seed, first_position + b)
            per_sample.append(
                region_dropout({k: m[b] for k, m in full.items()}, regions[b], condition.sparsity, generator=generator)
            )
        full = {name: torch.stack([sample[name] for sample in per_sample]) for name in full}  # (B, H, W)
    for name in condition.drop_labels:
        full[name] = torch.zeros_like(full[name])
    return full
