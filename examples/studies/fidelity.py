"""How much of the semantic class survives a merger: linear read-outs at each stage.

A one-hot map hands the generator its class exactly; a merger's concept may not. To find where
class information is lost, a linear classifier (least squares on one-hot targets, with a bias)
is fitted on the features of training scenes' pixels and scored on held-out scenes, at every
stage a merger has:

- TLAM: the semantic token as embedded (``GELU(A_k x_k + b_k) + p_k``), the same token after
  the transformer blocks, and the concept (the mean over all tokens);
- CLAM and naive concatenation: the concept.

A stage that scores well followed by one that scores badly is where the class is lost: in the
embedding (too narrow a width for the classes), in attention, or in the mean over tokens.
"""

from __future__ import annotations

import torch
from einops import rearrange

from examples.metrics.segmentation import ConfusionMatrix

__all__ = ["class_readout", "fit_linear_readout"]

RIDGE = 1e-6  # relative to the mean feature energy: only there to keep the solve well posed


def _pixels(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B*H*W, C)`` float64."""
    return rearrange(features, "b c h w -> (b h w) c").double()


def fit_linear_readout(features: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Least-squares weights ``(C + 1, K)`` from pixel features ``(P, C)`` to one-hot classes ``(P,)``."""
    x = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], dim=1)  # (P, C + 1)
    y = torch.nn.functional.one_hot(classes, num_classes).to(x.dtype)  # (P, K)
    gram = x.T @ x  # (C + 1, C + 1)
    ridge = RIDGE * gram.diagonal().mean() * torch.eye(len(gram), dtype=x.dtype)
    return torch.linalg.solve(gram + ridge, x.T @ y)


def _predict(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    x = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], dim=1)
    return (x @ weights).argmax(dim=1)  # (P,)


def _stages(merger, labels: dict, masks: dict) -> dict[str, torch.Tensor]:
    """Each stage's features ``(B, C, H, W)`` for one set of scenes."""
    with torch.no_grad():
        stages = {"concept": merger(labels, masks).float()}
        if hasattr(merger, "token_states"):
            index = list(merger.specs).index("semantic")
            states = merger.token_states(labels, masks)  # depth + 1 of (B, N, d, H, W)
            stages = {
                "semantic token, embedded": states[0][:, index],
                "semantic token, after the blocks": states[-1][:, index],
                **stages,
            }
    return stages


def class_readout(merger, fit, test) -> dict[str, dict[str, float]]:
    """Held-out mIoU and pixel accuracy of a linear class read-out at each stage of ``merger``.

    Args:
        merger: A trained ``TLAM``, ``CLAM`` or ``NaiveConcat`` whose specs include ``semantic``.
        fit: Scenes (:class:`~examples.studies.probe.SceneTensors`) the read-outs are fitted on.
        test: Held-out scenes they are scored on.

    Returns:
        ``{stage: {"miou", "pixel_accuracy"}}``, dense labels throughout.
    """
    num_classes = merger.specs["semantic"].channels
    known = lambda scenes: ({k: v for k, v in scenes.labels.items() if k in merger.specs},  # noqa: E731
                            {k: v for k, v in scenes.masks.items() if k in merger.specs})  # fmt: skip
    fit_stages, test_stages = _stages(merger, *known(fit)), _stages(merger, *known(test))
    fit_classes = fit.labels["semantic"].reshape(-1).long()  # (P_fit,)
    test_classes = test.labels["semantic"].reshape(-1).long()  # (P_test,)
    scores = {}
    for stage, features in fit_stages.items():
        weights = fit_linear_readout(_pixels(features), fit_classes, num_classes)
        predicted = _predict(weights, _pixels(test_stages[stage]))
        confusion = ConfusionMatrix(num_classes, ignore_index=merger.specs["semantic"].ignore_index)
        confusion.update(predicted, test_classes)
        score = confusion.compute()
        scores[stage] = {"miou": score.miou, "pixel_accuracy": score.pixel_accuracy}
    return scores
