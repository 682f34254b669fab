"""The label-merging blocks: TLAM (the paper's), CLAM and NaiveConcat (its baselines).

Each turns ``labels`` (``{name: tensor}``) and optional ``masks`` into one concept tensor
``(B, out_channels, H, W)`` that a SPADE/ASAP-style generator takes instead of a one-hot
segmentation map.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from . import reference
from .backend import check_backend, resolve_backend
from .labels import LabelSpec, PixelLabel, check_specs, flatten_labels
from .normalization import LabelNormalization, NormalizationLoadHints
from .transformer import TransformerBlock

__all__ = ["TLAM", "CLAM", "NaiveConcat"]

DROP_MODES = ("zero", "exclude")
CONCAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _positive_int(name: str, value, *, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")


def _positive_finite(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")


def _missing_everywhere(spec: LabelSpec, name: str, device: torch.device) -> PixelLabel:
    """A one-pixel stand-in for a label absent from ``labels`` (zero input, not present)."""
    values = (
        torch.zeros(1, dtype=torch.long, device=device)
        if spec.is_categorical
        else torch.zeros(1, spec.channels, device=device)
    )
    return PixelLabel(name, spec, values, torch.zeros(1, dtype=torch.bool, device=device))


class _TokenMerger(NormalizationLoadHints, nn.Module, ABC):
    """Shared plumbing of TLAM and CLAM: validation, tokens per pixel, chunking, layout.

    Subclasses implement ``_label_tokens`` (one label's ``(P, d)`` tokens) and
    ``_merge_tokens`` (``(P, N, d)`` tokens and ``(P, N)`` presence to ``(P, d)`` concepts).
    """

    def __init__(self, specs, dim, drop, chunk_pixels, concept_norm, device, dtype) -> None:
        super().__init__()
        self.specs = check_specs(specs)
        self.normalize = LabelNormalization(self.specs, device=device)
        _positive_int("dim", dim)
        _positive_int("chunk_pixels", chunk_pixels, allow_none=True)
        if drop not in DROP_MODES:
            raise ValueError(f"drop must be one of {DROP_MODES}, got {drop!r}")
        self.dim = dim
        self._drop = drop
        self.chunk_pixels = chunk_pixels
        self.proj = nn.ModuleDict(
            {name: nn.Linear(spec.channels, dim, device=device, dtype=dtype) for name, spec in self.specs.items()}
        )
        if drop == "exclude":
            self.null_concept = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))
        else:
            self.register_parameter("null_concept", None)
        # Off by default: the paper's concept has no final normalisation.
        self.concept_norm = nn.LayerNorm(dim, device=device, dtype=dtype) if concept_norm else None

    @property
    def drop(self) -> str:
        """``"zero"`` or ``"exclude"``: fixed at construction (exclude mode owns ``null_concept``)."""
        return self._drop

    @property
    def out_channels(self) -> int:
        """Channels of the concept tensor."""
        return self.dim

    @property
    def label_names(self) -> list[str]:
        """Label names in token order."""
        return list(self.specs)

    @abstractmethod
    def _label_tokens(self, index: int, label: PixelLabel) -> torch.Tensor:
        """One label's tokens ``(P, d)`` (``(1, d)`` for a label absent everywhere)."""

    @abstractmethod
    def _merge_tokens(self, z: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``(P, N, d)`` tokens and ``(P, N)`` presence to ``(P, d)`` concepts."""

    def _tokens(self, given: dict[str, PixelLabel], num_pixels: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``(P, N, d)`` and presence ``(P, N)`` for one chunk of pixels, in spec order."""
        tokens, present = [], []
        for index, (name, spec) in enumerate(self.specs.items()):
            label = given.get(name) or _missing_everywhere(spec, name, device)
            tok = self._label_tokens(index, label)  # (P, d) or (1, d) for an absent label
            tokens.append(tok.expand(num_pixels, -1))
            present.append(label.present.expand(num_pixels))
        dtype = tokens[0].dtype
        for t in tokens[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        z = torch.stack([t.to(dtype) for t in tokens], dim=1)  # (P, N, d)
        return z, torch.stack(present, dim=1)  # (P, N)

    def _pixel_chunks(self, labels, masks):
        """Validate, then yield ``(given, P_chunk)`` per chunk of pixels; also return (B, H, W)."""
        (B, H, W), flat = flatten_labels(self.specs, labels, masks)
        flat = [self.normalize(lab) for lab in flat]
        num_pixels = B * H * W
        step = self.chunk_pixels or max(num_pixels, 1)
        chunks = []
        for start in range(0, num_pixels, step):
            stop = min(start + step, num_pixels)
            chunks.append(({lab.name: lab.chunk(start, stop) for lab in flat}, stop - start))
        return (B, H, W), chunks, flat[0].values.device

    def forward(
        self, labels: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Merge the labels into the concept tensor.

        Args:
            labels: ``{name: tensor}`` for any non-empty subset of the specs (a label left out
                is missing at every pixel). Categorical: integer ``(B, H, W)`` or
                ``(B, 1, H, W)``; continuous: float ``(B, C, H, W)``.
            masks: Optional ``{name: bool (B, H, W) or (B, 1, H, W)}``, True where the label is
                present. Values at missing positions never reach the output, even NaN or inf.

        Returns:
            ``(B, out_channels, H, W)`` in ``channels_last`` memory format (the natural layout
            of a per-pixel result; call ``.contiguous()`` for NCHW strides).

        Raises:
            TypeError: A label or mask of the wrong type or dtype.
            ValueError: Unknown label, wrong shape, mismatched sizes or devices, class id out
                of range, or an explicit backend that cannot run.
        """
        (B, H, W), chunks, device = self._pixel_chunks(labels, masks)
        if B * H * W == 0:
            dtype = self.proj[self.label_names[0]].weight.dtype
            return torch.zeros(B, self.dim, H, W, device=device, dtype=dtype)
        outs = []
        for given, num_pixels in chunks:
            z, present = self._tokens(given, num_pixels, device)
            outs.append(self._merge_tokens(z, present))  # (P_chunk, d)
        out = outs[0] if len(outs) == 1 else torch.cat(outs)  # (P, d)
        if self.concept_norm is not None:
            out = self.concept_norm(out)
        return rearrange(out, "(b h w) d -> b d h w", b=B, h=H, w=W)


class TLAM(_TokenMerger):
    """Transformer LAbel Merging: a pixel-wise transformer across label tokens (paper Sec. 3.1).

    For pixel ``(i, j)`` and label ``k``: ``z_k = GELU(A_k x_k + b_k) + p_k`` (Eq. 1 plus the
    label encoding), then ``depth`` pre-LN transformer blocks (Eq. 2, 3), then the mean over
    tokens. A missing label is a zero input (``drop="zero"``, the paper) or a token left out of
    attention and of the mean (``drop="exclude"``; a pixel with nothing present gets the learned
    ``null_concept``).

    Args:
        specs: Ordered ``{name: LabelSpec}``; the order fixes the token order.
        dim: Token and concept width ``d`` (paper: 96).
        depth: Number of transformer blocks (paper: 3).
        heads: Attention heads (paper: 3); ``dim`` must be divisible by it.
        mlp_ratio: MLP hidden width over ``dim``.
        drop: ``"zero"`` or ``"exclude"``.
        chunk_pixels: Run at most this many pixels at a time, bounding peak memory; exact,
            since pixels are independent.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (see :mod:`label_merge.backend`).
        checkpoint: Recompute each transformer block in backward (reference path) instead of
            storing its activations.
        concept_norm: End with a LayerNorm over the concept channels (``concept_norm``), so the
            concept has unit scale per pixel whatever the labels' ranges. Off by default: the
            paper has none.
        device: Factory argument for the parameters.
        dtype: Factory argument for the parameters.

    Raises:
        ValueError: Bad specs or hyper-parameters.

    Examples:
        >>> import torch
        >>> from label_merge import TLAM, LabelSpec
        >>> merger = TLAM({"semantic": LabelSpec.categorical(4), "depth": LabelSpec.continuous(1)}, dim=12, heads=3)
        >>> labels = {"semantic": torch.randint(0, 4, (2, 8, 8)), "depth": torch.rand(2, 1, 8, 8)}
        >>> merger(labels).shape
        torch.Size([2, 12, 8, 8])
    """

    def __init__(
        self,
        specs: Mapping[str, LabelSpec],
        dim: int = 96,
        depth: int = 3,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        drop: str = "zero",
        chunk_pixels: int | None = None,
        backend: str = "auto",
        checkpoint: bool = False,
        concept_norm: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(specs, dim, drop, chunk_pixels, concept_norm, device, dtype)
        _positive_int("depth", depth)
        _positive_int("heads", heads)
        _positive_finite("mlp_ratio", mlp_ratio)
        self.depth = depth
        self.heads = heads
        self.mlp_ratio = mlp_ratio
        self.backend = check_backend(backend)
        self.checkpoint = checkpoint
        self.label_embed = nn.Parameter(torch.empty(len(self.specs), dim, device=device, dtype=dtype))
        nn.init.trunc_normal_(self.label_embed, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, mlp_ratio, device=device, dtype=dtype) for _ in range(depth)
        )

    def _label_tokens(self, index: int, label: PixelLabel) -> torch.Tensor:
        proj = self.proj[label.name]
        return reference.embed_label(label, proj.weight, proj.bias) + self.label_embed[index]  # (P, d)

    def _merge_tokens(self, z: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        if resolve_backend(self.backend, z.device, z.dtype, self) == "triton":
            from ._triton import encode_tokens as fused_encode_tokens

            return fused_encode_tokens(z, present, self.blocks, drop=self.drop, null_concept=self.null_concept)
        return reference.encode_tokens(
            z, present, self.blocks, drop=self.drop, null_concept=self.null_concept, checkpoint=self.checkpoint
        )

    @torch.no_grad()
    def contributions(
        self,
        labels: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor] | None = None,
        *,
        layer: int | None = None,
    ) -> torch.Tensor:
        """How much each label contributes at each pixel: the attention its token receives.

        The attention probabilities are averaged over heads, over the query tokens that form
        the concept (all tokens with ``drop="zero"``, present ones with ``"exclude"``) and over
        layers (or one ``layer``). The share of missing labels is then removed and the rest
        renormalised, so each pixel's map sums to 1 over its present labels (0 everywhere where
        nothing is present). Runs the reference path.

        Args:
            labels: As for :meth:`forward`.
            masks: As for :meth:`forward`.
            layer: Index of one transformer block, or None for the mean over all blocks.

        Returns:
            ``(B, N, H, W)`` float32 in spec (token) order.

        Examples:
            >>> import torch
            >>> from label_merge import TLAM, LabelSpec
            >>> m = TLAM({"a": LabelSpec.continuous(1), "b": LabelSpec.continuous(2)}, dim=8, heads=2)
            >>> c = m.contributions({"a": torch.rand(1, 1, 4, 4), "b": torch.rand(1, 2, 4, 4)})
            >>> torch.allclose(c.sum(1), torch.ones(1, 4, 4))
            True
        """
        if layer is not None and not -self.depth <= layer < self.depth:
            raise ValueError(f"layer must be in [{-self.depth}, {self.depth - 1}] or None, got {layer}")
        (B, H, W), chunks, device = self._pixel_chunks(labels, masks)
        if B * H * W == 0:  # an empty batch or a zero-size side: nothing to attend to
            return torch.zeros(B, len(self.specs), H, W, device=device)
        outs = []
        for given, num_pixels in chunks:
            z, present = self._tokens(given, num_pixels, device)
            key_mask = reference.attention_keys(present) if self.drop == "exclude" else None
            queries = present.float() if self.drop == "exclude" else torch.ones_like(present, dtype=torch.float)
            received = []
            for block in self.blocks:
                z, probs = reference.transformer_block(z, key_mask, block, return_weights=True)
                probs = probs.float().mean(dim=1)  # (P, Nq, Nk), mean over heads
                received.append(torch.einsum("pqk,pq->pk", probs, queries))  # (P, N)
            share = received[layer] if layer is not None else torch.stack(received).mean(dim=0)
            share = share * present
            outs.append(share / share.sum(dim=1, keepdim=True).clamp_min(torch.finfo(share.dtype).tiny))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)  # (P, N)
        return rearrange(out, "(b h w) n -> b n h w", b=B, h=H, w=W)

    @torch.no_grad()
    def token_states(
        self, labels: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """Every label token of every pixel, as embedded and after each transformer block.

        For looking inside the merger: what a token carries before and after attention, and so
        what the mean over tokens keeps of it. Runs the reference path.

        Args:
            labels: As for :meth:`forward`.
            masks: As for :meth:`forward`.

        Returns:
            ``depth + 1`` tensors ``(B, N, dim, H, W)`` in spec (token) order: the embedded
            tokens ``e_k + p_k``, then the output of each block. With ``drop="zero"`` the
            concept is the mean of the last one over ``N``.

        Examples:
            >>> import torch
            >>> from label_merge import TLAM, LabelSpec
            >>> m = TLAM({"a": LabelSpec.continuous(1), "b": LabelSpec.categorical(3)}, dim=8, depth=2, heads=2)
            >>> labels = {"a": torch.rand(1, 1, 4, 4), "b": torch.randint(0, 3, (1, 4, 4))}
            >>> states = m.token_states(labels)
            >>> len(states), tuple(states[-1].shape)
            (3, (1, 2, 8, 4, 4))
            >>> torch.allclose(states[-1].mean(dim=1), m(labels), atol=1e-6)
            True
        """
        (B, H, W), chunks, device = self._pixel_chunks(labels, masks)
        if B * H * W == 0:
            dtype = self.proj[self.label_names[0]].weight.dtype
            return [torch.zeros(B, len(self.specs), self.dim, H, W, device=device, dtype=dtype)] * (self.depth + 1)
        per_chunk = []
        for given, num_pixels in chunks:
            z, present = self._tokens(given, num_pixels, device)  # (P, N, d), (P, N)
            key_mask = reference.attention_keys(present) if self.drop == "exclude" else None
            states = [z]
            for block in self.blocks:
                z = reference.transformer_block(z, key_mask, block)
                states.append(z)
            per_chunk.append(states)
        layers = [torch.cat([chunk[i] for chunk in per_chunk]) for i in range(self.depth + 1)]  # each (P, N, d)
        return [rearrange(z, "(b h w) n d -> b n d h w", b=B, h=H, w=W) for z in layers]

    def extra_repr(self) -> str:
        return (
            f"labels={self.label_names}, dim={self.dim}, depth={self.depth}, heads={self.heads}, "
            f"drop={self.drop!r}, backend={self.backend!r}, chunk_pixels={self.chunk_pixels}, "
            f"concept_norm={self.concept_norm is not None}"
        )


class CLAM(_TokenMerger):
    """Convolutional LAbel Merging, the paper's baseline (Sec. 4.2).

    Per label, a stack of ``1 + depth`` pixel-wise ``Linear + GELU`` blocks (the first is the
    projection of Eq. 1, the rest ``d -> d``), then the mean over labels. There is no
    interaction between labels before the mean.

    Args:
        specs: Ordered ``{name: LabelSpec}``.
        dim: Concept width ``d``.
        depth: Number of ``d -> d`` blocks after the projection.
        drop: ``"zero"`` or ``"exclude"``, as for :class:`TLAM`.
        chunk_pixels: Bound on pixels per step (exact).
        concept_norm: End with a LayerNorm over the concept channels, as for :class:`TLAM`.
        device: Factory argument for the parameters.
        dtype: Factory argument for the parameters.

    Examples:
        >>> import torch
        >>> from label_merge import CLAM, LabelSpec
        >>> merger = CLAM({"depth": LabelSpec.continuous(1)}, dim=16)
        >>> merger({"depth": torch.rand(1, 1, 5, 7)}).shape
        torch.Size([1, 16, 5, 7])
    """

    def __init__(
        self,
        specs: Mapping[str, LabelSpec],
        dim: int = 96,
        depth: int = 3,
        drop: str = "zero",
        chunk_pixels: int | None = None,
        concept_norm: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(specs, dim, drop, chunk_pixels, concept_norm, device, dtype)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be a non-negative int, got {depth!r}")
        self.depth = depth
        self.layers = nn.ModuleDict(
            {
                name: nn.ModuleList(nn.Linear(dim, dim, device=device, dtype=dtype) for _ in range(depth))
                for name in self.specs
            }
        )

    def _label_tokens(self, index: int, label: PixelLabel) -> torch.Tensor:
        proj = self.proj[label.name]
        e = reference.embed_label(label, proj.weight, proj.bias)  # (P, d)
        for layer in self.layers[label.name]:
            e = F.gelu(layer(e))
        return e

    def _merge_tokens(self, z: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return reference.pool_tokens(z, present if self.drop == "exclude" else None, self.null_concept)

    def extra_repr(self) -> str:
        return f"labels={self.label_names}, dim={self.dim}, depth={self.depth}, drop={self.drop!r}"


class NaiveConcat(NormalizationLoadHints, nn.Module):
    """The paper's naive baseline: all labels concatenated along channels.

    Categorical labels become one-hot channels, continuous ones are copied (after their spec's
    normalisation, if any), missing values are
    zeroed (a missing categorical pixel has an all-zero one-hot vector), and with
    ``include_masks`` one presence channel per label follows, in spec order. It has no
    parameters.

    Args:
        specs: Ordered ``{name: LabelSpec}``.
        include_masks: Append one 0/1 presence channel per label.
        dtype: Output dtype (float16, bfloat16, float32 or float64); None takes the promoted
            dtype of the continuous labels given, or the default dtype when only categorical
            labels are given.

    Raises:
        TypeError: Any other ``dtype``.

    Examples:
        >>> import torch
        >>> from label_merge import NaiveConcat, LabelSpec
        >>> cat = NaiveConcat({"semantic": LabelSpec.categorical(3), "depth": LabelSpec.continuous(1)})
        >>> cat.out_channels
        6
        >>> cat({"semantic": torch.zeros(1, 2, 2, dtype=torch.long)}).shape
        torch.Size([1, 6, 2, 2])
    """

    def __init__(
        self, specs: Mapping[str, LabelSpec], include_masks: bool = True, *, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.specs = check_specs(specs)
        self.normalize = LabelNormalization(self.specs)
        self.include_masks = include_masks
        if dtype is not None and dtype not in CONCAT_DTYPES:
            # An integer dtype would truncate the (normalised) values, float8 would round them coarsely.
            raise TypeError(f"NaiveConcat dtype must be None or one of {CONCAT_DTYPES}, got {dtype!r}")
        self.dtype = dtype

    @property
    def out_channels(self) -> int:
        return sum(s.channels for s in self.specs.values()) + (len(self.specs) if self.include_masks else 0)

    @property
    def label_names(self) -> list[str]:
        return list(self.specs)

    def forward(
        self, labels: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Concatenate the labels: ``(B, out_channels, H, W)``, contiguous NCHW.

        Args and errors as for :meth:`TLAM.forward`.
        """
        (B, H, W), flat = flatten_labels(self.specs, labels, masks)
        given = {lab.name: self.normalize(lab) for lab in flat}
        dtype = self.dtype
        if dtype is None:
            floats = [lab.values.dtype for lab in flat if not lab.spec.is_categorical]
            dtype = torch.get_default_dtype() if not floats else floats[0]
            for d in floats[1:]:
                dtype = torch.promote_types(dtype, d)
        device = flat[0].values.device
        channels, presence = [], []
        for name, spec in self.specs.items():
            lab = given.get(name)
            if lab is None:
                channels.append(torch.zeros(B * H * W, spec.channels, device=device, dtype=dtype))
                presence.append(torch.zeros(B * H * W, device=device, dtype=dtype))
                continue
            if spec.is_categorical:
                onehot = F.one_hot(lab.values, spec.num_classes).to(dtype)  # (P, classes)
                channels.append(onehot * lab.present.unsqueeze(1).to(dtype))
            else:
                channels.append(lab.values.to(dtype))  # missing positions already zero
            presence.append(lab.present.to(dtype))
        if self.include_masks:
            channels.append(torch.stack(presence, dim=1))  # (P, N)
        out = torch.cat(channels, dim=1)  # (P, out_channels)
        return rearrange(out, "(b h w) c -> b c h w", b=B, h=H, w=W).contiguous()

    def extra_repr(self) -> str:
        return f"labels={self.label_names}, include_masks={self.include_masks}"
