"""Procedural albedo textures evaluated in surface coordinates (metres).

Patterns are functions of the 2-D surface coordinates that :mod:`.geometry` returns, so a
texture sticks to its surface: a checker on the floor recedes in perspective and a stripe on a
cylinder wraps around it. That is what makes texture edges and foreshortening informative.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["PATTERNS", "Material"]

PATTERNS = ("solid", "checker", "stripes", "planks", "tiles", "noise")
"""Texture patterns a :class:`Material` may use."""

_GROUT_DARKENING = 0.55


def _cell_hash(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """A repeatable pseudo-random value in [0, 1) per integer cell ``(i, j)`` (exact integer maths)."""
    h = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663)
    h = (h * 2654435761) >> 8
    return (h & 0xFFFF).astype(np.float64) / 65536.0


@dataclass(frozen=True)
class Material:
    """A textured, Lambertian surface.

    Attributes:
        color: ``(3,)`` base albedo in [0, 1].
        accent: ``(3,)`` second albedo used by the pattern (checker squares, stripes, grout...).
        pattern: One of :data:`PATTERNS`.
        scale: Pattern period in metres (checker square, stripe, plank or tile width).
        angle: Rotation of the pattern in the surface plane, radians.
        grain: Amplitude of a multiplicative smooth noise on top of the pattern (0 = none).
        noise_freq: ``(K, 2)`` spatial frequencies of the noise, cycles per metre.
        noise_phase: ``(K,)`` phases of the noise, radians.
        curvature_smoothing: A length in metres; the pattern's contrast is scaled by
            ``exp(-curvature_smoothing * H)`` where ``H`` is the mean curvature of the surface
            point, so strongly curved parts of an object look plain (0 = no effect).
        gloss: Specular reflectance of a white Blinn-Phong highlight (0 = matte).
        shininess: Blinn-Phong exponent; larger is a smaller, sharper highlight.
    """

    color: np.ndarray
    accent: np.ndarray
    pattern: str = "solid"
    scale: float = 0.5
    angle: float = 0.0
    grain: float = 0.0
    noise_freq: np.ndarray = field(default_factory=lambda: np.zeros((1, 2)))
    noise_phase: np.ndarray = field(default_factory=lambda: np.zeros(1))
    curvature_smoothing: float = 0.0
    gloss: float = 0.0
    shininess: float = 20.0

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}, got {self.pattern!r}")
        if not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale!r}")
        if not (0 <= self.gloss <= 1 and self.shininess >= 1):
            raise ValueError(f"gloss must lie in [0, 1] and shininess be >= 1, got {self.gloss!r}, {self.shininess!r}")
        if not self.curvature_smoothing >= 0:
            raise ValueError(f"curvature_smoothing must be >= 0, got {self.curvature_smoothing!r}")

    def _noise(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Smooth noise in [-1, 1]: a normalised sum of plane waves."""
        phase = 2 * np.pi * (self.noise_freq[:, :1] * u + self.noise_freq[:, 1:] * v) + self.noise_phase[:, None]
        return np.sin(phase).mean(axis=0)  # (K, N) -> (N,)

    def albedo(self, uv: np.ndarray, mean_curvature: np.ndarray | None = None) -> np.ndarray:
        """Albedo at surface coordinates.

        Args:
            uv: ``(2, N)`` surface coordinates in metres.
            mean_curvature: ``(N,)`` mean curvature ``(k1 + k2) / 2`` in 1/m at the points
                (only used with ``curvature_smoothing``; None counts as flat).

        Returns:
            ``(3, N)`` albedo in [0.02, 0.95].
        """
        c, s = np.cos(self.angle), np.sin(self.angle)
        u = (c * uv[0] + s * uv[1]) / self.scale  # in pattern periods
        v = (-s * uv[0] + c * uv[1]) / self.scale
        shade = np.ones(u.shape)
        if self.pattern == "solid":
            mix = np.zeros(u.shape)
        elif self.pattern == "checker":
            mix = (np.floor(u) + np.floor(v)) % 2
        elif self.pattern == "stripes":
            mix = np.floor(u) % 2
        elif self.pattern == "planks":
            # Rows of planks one period wide and six long, with staggered joints.
            row = np.floor(v)
            along = u / 6.0 + 0.37 * row
            mix = 0.7 * _cell_hash(np.floor(along), row)
            joint = ((v - row) < 0.05) | ((along - np.floor(along)) < 0.01)
            shade = np.where(joint, _GROUT_DARKENING, 1.0)
        elif self.pattern == "tiles":
            mix = 0.25 * _cell_hash(np.floor(u), np.floor(v))
            grout = ((u - np.floor(u)) < 0.06) | ((v - np.floor(v)) < 0.06)
            mix = np.where(grout, 1.0, mix)
        else:  # noise
            mix = 0.5 + 0.5 * self._noise(u * self.scale, v * self.scale)
        if self.curvature_smoothing and mean_curvature is not None:
            mix = mix * np.exp(-self.curvature_smoothing * mean_curvature)
        albedo = self.color[:, None] * (1 - mix) + self.accent[:, None] * mix
        if self.grain:
            shade = shade * (1 + self.grain * self._noise(uv[0], uv[1]))
        return np.clip(albedo * shade, 0.02, 0.95)
