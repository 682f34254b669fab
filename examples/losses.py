"""Training losses of ASAP-Net / SPADE: hinge GAN, discriminator feature matching, VGG19 perceptual.

Discriminator outputs are what :class:`examples.discriminator.MultiscaleDiscriminator` returns:
one list per scale of feature maps with the patch logits last. The GAN losses use only the
logits of each scale and average over scales; feature matching uses every map but the logits.

The perceptual loss needs ImageNet VGG19 weights in torchvision's format
(``vgg19-dcbb9e9d.pth``). Nothing is downloaded: pass ``weights_path=`` or set the environment
variable ``LABEL_MERGE_VGG19``. Without either the loss is off (a warning, then zeros).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "VGG19_ENV_VAR",
    "VGG19Features",
    "VGGPerceptualLoss",
    "feature_matching_loss",
    "hinge_loss_d_fake",
    "hinge_loss_d_real",
    "hinge_loss_g",
    "load_vgg19_features",
    "resolve_vgg19_path",
]

VGG19_ENV_VAR = "LABEL_MERGE_VGG19"

DOutputs = Sequence[Sequence[torch.Tensor] | torch.Tensor]


# --- hinge GAN loss -------------------------------------------------------------------------


def _logits_per_scale(outputs: DOutputs | torch.Tensor) -> list[torch.Tensor]:
    """Logits of each scale: the last map of each scale's list (a bare tensor is one scale)."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if len(outputs) == 0:
        raise ValueError("discriminator outputs are empty: expected one entry per scale")
    logits = []
    for i, scale in enumerate(outputs):
        if isinstance(scale, torch.Tensor):
            logits.append(scale)
        elif len(scale) == 0:
            raise ValueError(f"discriminator outputs of scale {i} are empty")
        else:
            logits.append(scale[-1])
    return logits


def hinge_loss_d_real(outputs: DOutputs | torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss on real samples: ``mean(relu(1 - logits))``, averaged over scales.

    Args:
        outputs: Per scale, a list of maps whose last is the logits (or the logits tensor
            itself); a single tensor counts as one scale.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: Empty outputs.

    Example:
        >>> hinge_loss_d_real([[torch.tensor([-1.0, 0.5, 2.0])]])
        tensor(0.8333)
    """
    logits = _logits_per_scale(outputs)
    return sum(F.relu(1 - x).mean() for x in logits) / len(logits)


def hinge_loss_d_fake(outputs: DOutputs | torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss on generated samples: ``mean(relu(1 + logits))``, averaged over scales.

    Args:
        outputs: As in :func:`hinge_loss_d_real` (compute them on a detached fake image).

    Returns:
        Scalar tensor.

    Raises:
        ValueError: Empty outputs.

    Example:
        >>> hinge_loss_d_fake([[torch.tensor([-1.0, 0.5, 2.0])]])
        tensor(1.5000)
    """
    logits = _logits_per_scale(outputs)
    return sum(F.relu(1 + x).mean() for x in logits) / len(logits)


def hinge_loss_g(outputs: DOutputs | torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: ``-mean(logits)`` on generated samples, averaged over scales.

    Args:
        outputs: As in :func:`hinge_loss_d_real`.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: Empty outputs.

    Example:
        >>> hinge_loss_g([[torch.tensor([-1.0, 0.5, 2.0])]])
        tensor(-0.5000)
    """
    logits = _logits_per_scale(outputs)
    return sum(-x.mean() for x in logits) / len(logits)


# --- feature matching -----------------------------------------------------------------------


def feature_matching_loss(
    fake_outputs: Sequence[Sequence[torch.Tensor]],
    real_outputs: Sequence[Sequence[torch.Tensor]],
    *,
    lambda_feat: float = 10.0,
) -> torch.Tensor:
    """Discriminator feature matching: ``sum_s sum_j L1(fake_sj, real_sj.detach()) * lambda / num_scales``.

    ``j`` runs over every map of a scale except the last (the logits); there is no per-layer
    weight (SPADE's form).

    Args:
        fake_outputs: D's outputs on the generated image (not detached: G learns from this).
        real_outputs: D's outputs on the real image (detached here).
        lambda_feat: Weight (10).

    Returns:
        Scalar tensor.

    Raises:
        ValueError: Outputs with different numbers of scales or maps, mismatched shapes, or
            no intermediate maps at all.

    Example:
        >>> f = [[torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 3, 3)]]
        >>> r = [[torch.ones(1, 2, 4, 4), torch.ones(1, 1, 3, 3)]]
        >>> feature_matching_loss(f, r)
        tensor(10.)
    """
    if len(fake_outputs) != len(real_outputs) or len(fake_outputs) == 0:
        raise ValueError(
            f"fake and real outputs must have the same, non-zero number of scales, "
            f"got {len(fake_outputs)} and {len(real_outputs)}"
        )
    num_scales = len(fake_outputs)
    total = None
    for s, (fake, real) in enumerate(zip(fake_outputs, real_outputs, strict=True)):
        if len(fake) != len(real):
            raise ValueError(f"scale {s}: fake has {len(fake)} maps, real has {len(real)}")
        if len(fake) < 2:
            raise ValueError(f"scale {s}: need intermediate features before the logits, got {len(fake)} map(s)")
        for j, (f, r) in enumerate(zip(fake[:-1], real[:-1], strict=True)):
            if f.shape != r.shape:
                raise ValueError(f"scale {s}, map {j}: fake shape {tuple(f.shape)} != real shape {tuple(r.shape)}")
            term = F.l1_loss(f, r.detach()) * (lambda_feat / num_scales)
            total = term if total is None else total + term
    return total


# --- VGG19 perceptual loss ------------------------------------------------------------------

# torchvision's configuration "E" (VGG19): conv widths, "M" = 2x2 max pool.
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
# Ends of the slices of ``features`` giving relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
_SLICE_ENDS = (2, 7, 12, 21, 30)
_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


class VGG19Features(nn.Module):
    """VGG19's convolutional part, laid out exactly as torchvision's ``vgg19().features``.

    ``self.features`` is an ``nn.Sequential`` of 37 modules (3x3 conv with padding 1, ReLU,
    2x2 max pool) so that the state-dict keys are ``features.N.weight`` / ``features.N.bias``
    with torchvision's indices N (convs at 0, 2, 5, 7, 10, ...). Weights are random until
    loaded (:func:`load_vgg19_features`). The forward returns relu1_1, relu2_1, relu3_1,
    relu4_1 and relu5_1 (``features[:2]``, ``[2:7]``, ``[7:12]``, ``[12:21]``, ``[21:30]``).

    Example:
        >>> [f.shape[1] for f in VGG19Features()(torch.zeros(1, 3, 16, 16))]
        [64, 128, 256, 512, 512]
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` -> the five relu outputs (``H`` and ``W`` down to ``/16``)."""
        outs, start = [], 0
        for end in _SLICE_ENDS:
            for i in range(start, end):
                x = self.features[i](x)
            outs.append(x)
            start = end
        return outs


def resolve_vgg19_path(weights_path: str | os.PathLike | None = None) -> Path | None:
    """The VGG19 weights file to use: ``weights_path``, else ``$LABEL_MERGE_VGG19``, else None.

    Example:
        >>> resolve_vgg19_path("/data/vgg19-dcbb9e9d.pth")
        PosixPath('/data/vgg19-dcbb9e9d.pth')
    """
    if weights_path is not None and str(weights_path) != "":
        return Path(weights_path)
    env = os.environ.get(VGG19_ENV_VAR, "")
    return Path(env) if env else None


def load_vgg19_features(path: str | os.PathLike) -> VGG19Features:
    """Build :class:`VGG19Features` and load a torchvision VGG19 state dict from ``path``.

    The file is a ``torch.save``-d state dict (torchvision's ``vgg19-dcbb9e9d.pth``). Keys
    ``features.N.weight`` / ``features.N.bias`` must all be there with torchvision's shapes;
    ``classifier.*`` keys are ignored; any other key is an error.

    Args:
        path: The ``.pth`` file.

    Returns:
        The network in eval mode, parameters frozen.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is not a state dict, or has missing, unexpected or mis-shaped keys
            (the message names the file and the keys).

    Example:
        >>> vgg = load_vgg19_features("vgg19-dcbb9e9d.pth")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"VGG19 weights file not found: {path} (torchvision's vgg19-dcbb9e9d.pth; "
            f"pass weights_path= or set {VGG19_ENV_VAR})"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ValueError(f"could not read VGG19 weights from {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"VGG19 weights file {path} must hold a state dict, got {type(state).__name__}")
    model = VGG19Features()
    expected = model.state_dict()
    given = {k: v for k, v in state.items() if not str(k).startswith("classifier.")}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected), key=str)
    if missing or unexpected:
        raise ValueError(
            f"VGG19 weights file {path} does not match torchvision's vgg19 features: "
            f"missing keys {missing[:6]}{'...' if len(missing) > 6 else ''}, "
            f"unexpected keys {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}"
        )
    for key, ref in expected.items():
        value = given[key]
        if not isinstance(value, torch.Tensor) or value.shape != ref.shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"VGG19 weights file {path}: {key} has shape {got}, expected {tuple(ref.shape)}")
    model.load_state_dict({k: given[k].float() for k in expected})
    model.eval().requires_grad_(False)
    return model


class VGGPerceptualLoss(nn.Module):
    """``lambda * sum_i w_i * L1(vgg_i(fake), vgg_i(real).detach())`` with ``w = 1/32, 1/16, 1/8, 1/4, 1``.

    Images go in as they are, in ``[-1, 1]``, without ImageNet mean/std normalisation (what
    SPADE, ASAP-Net and pix2pixHD do). The VGG weights are frozen and kept in eval mode.

    If no weights file is given (neither ``weights_path`` nor ``$LABEL_MERGE_VGG19``), the loss
    is off: the constructor warns once, :attr:`enabled` is False, and :meth:`forward` returns a
    zero scalar.

    Args:
        weights_path: torchvision's ``vgg19-dcbb9e9d.pth``; default ``$LABEL_MERGE_VGG19``.
        lambda_vgg: Weight (10).

    Raises:
        FileNotFoundError, ValueError: See :func:`load_vgg19_features`.

    Example:
        >>> loss = VGGPerceptualLoss("vgg19-dcbb9e9d.pth")  # doctest: +SKIP
        >>> loss(fake, real)  # doctest: +SKIP
    """

    def __init__(self, weights_path: str | os.PathLike | None = None, *, lambda_vgg: float = 10.0) -> None:
        super().__init__()
        self.lambda_vgg = float(lambda_vgg)
        self.weights_path = resolve_vgg19_path(weights_path)
        if self.weights_path is None:
            warnings.warn(
                f"VGG19 perceptual loss is off: no weights file (pass weights_path= or set {VGG19_ENV_VAR} "
                f"to torchvision's vgg19-dcbb9e9d.pth)",
                stacklevel=2,
            )
            self.vgg = None
        else:
            self.vgg = load_vgg19_features(self.weights_path)

    @property
    def enabled(self) -> bool:
        """Whether weights were loaded (otherwise the loss is identically zero)."""
        return self.vgg is not None

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        """Keep the VGG in eval mode whatever the surrounding model does."""
        super().train(mode)
        if self.vgg is not None:
            self.vgg.eval()
        return self

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Perceptual distance of ``fake`` to ``real``.

        Args:
            fake: ``(B, 3, H, W)`` in ``[-1, 1]`` (gradients flow into it).
            real: ``(B, 3, H, W)`` in ``[-1, 1]``.

        Returns:
            Scalar tensor (zero when the loss is off).

        Raises:
            ValueError: Mismatched shapes or not 3-channel images.
        """
        if fake.shape != real.shape or fake.dim() != 4 or fake.shape[1] != 3:
            raise ValueError(
                f"fake and real must both be (B, 3, H, W), got {tuple(fake.shape)} and {tuple(real.shape)}"
            )
        if self.vgg is None:
            return fake.new_zeros(())
        dtype = next(self.vgg.parameters()).dtype
        feats_fake = self.vgg(fake.to(dtype))
        with torch.no_grad():
            feats_real = self.vgg(real.to(dtype))
        loss = sum(w * F.l1_loss(f, r) for w, f, r in zip(_LAYER_WEIGHTS, feats_fake, feats_real, strict=True))
        return loss * self.lambda_vgg
