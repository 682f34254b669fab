"""Weight initialisation shared by the generators and the discriminator.

ASAP-Net and SPADE both initialise every network with ``init_type="xavier"`` and
``init_variance=0.02``: ``xavier_normal_(weight, gain=0.02)`` on convolutions and linear layers,
zero biases. :func:`init_weights` does that (and offers the other common choices).
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

__all__ = ["init_weights", "INIT_TYPES"]

INIT_TYPES = ("xavier", "xavier_uniform", "normal", "kaiming", "orthogonal")

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm)


def _raw_weight(module: nn.Module):
    """The tensor that actually holds a layer's weights.

    Under ``torch.nn.utils.parametrizations.spectral_norm`` ``module.weight`` is recomputed from
    ``parametrizations.weight.original`` on every access, so writing into it would be lost.
    """
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def init_weights(module: nn.Module, *, init_type: str = "xavier", gain: float = 0.02) -> nn.Module:
    """Initialise every convolution / linear layer of ``module`` in place (ASAP/SPADE scheme).

    Conv and linear weights: ``xavier`` = ``xavier_normal_(w, gain)`` (the ASAP/SPADE default),
    ``xavier_uniform``, ``normal`` = ``N(0, gain)``, ``kaiming`` = ``kaiming_normal_(w, a=0,
    mode="fan_in")``, ``orthogonal`` (``gain``). Their biases are set to zero. Affine
    normalisation layers get weight 1 and bias 0. Spectral-normed layers are initialised through
    their raw (un-normalised) weight.

    Args:
        module: Any module; its submodules are visited recursively.
        init_type: One of :data:`INIT_TYPES`.
        gain: Gain (xavier, orthogonal) or standard deviation (normal).

    Returns:
        ``module`` itself, for chaining.

    Raises:
        ValueError: Unknown ``init_type`` or a non-positive ``gain``.

    Example:
        >>> from examples.asapnet import ASAPNetGenerator, ASAPNetConfig
        >>> g = init_weights(ASAPNetGenerator(8, config=ASAPNetConfig.small()))
    """
    if init_type not in INIT_TYPES:
        raise ValueError(f"init_type must be one of {INIT_TYPES}, got {init_type!r}")
    if not gain > 0:
        raise ValueError(f"gain must be positive, got {gain!r}")
    for m in module.modules():
        if isinstance(m, _WEIGHTED):
            w = _raw_weight(m)
            if init_type == "xavier":
                nn.init.xavier_normal_(w, gain=gain)
            elif init_type == "xavier_uniform":
                nn.init.xavier_uniform_(w, gain=gain)
            elif init_type == "normal":
                nn.init.normal_(w, 0.0, gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(w, a=0, mode="fan_in")
            else:
                nn.init.orthogonal_(w, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _NORMS):
            if getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    return module
