"""Procedural indoor scenes rendered by vectorised ray casting, with exact geometric labels.

The building blocks of :class:`examples.datasets.SyntheticDataset`: :mod:`.geometry`
(primitives and their exact normals and curvatures), :mod:`.materials` (procedural textures),
:mod:`.scene` (the scene description), :mod:`.sampling` (random scenes), :mod:`.edges` (the edge
label) and :mod:`.render` (ray casting, shading and labels).
"""

from .geometry import ROOM_FACES, Box, Cylinder, Room, Sphere
from .materials import PATTERNS, Material
from .render import RenderedScene, cast_rays, render_scene
from .sampling import SceneConfig, sample_scene
from .scene import CLASS_IDS, CLASS_NAMES, Camera, Decal, Light, Scene, SceneObject

__all__ = [
    "Box",
    "CLASS_IDS",
    "CLASS_NAMES",
    "Camera",
    "Cylinder",
    "Decal",
    "Light",
    "Material",
    "PATTERNS",
    "ROOM_FACES",
    "RenderedScene",
    "Room",
    "Scene",
    "SceneConfig",
    "SceneObject",
    "Sphere",
    "cast_rays",
    "render_scene",
    "sample_scene",
]
