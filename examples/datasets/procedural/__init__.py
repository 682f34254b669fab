"""Procedural indoor scenes rendered by vectorised ray casting, with exact geometric labels.

The building blocks of :class:`examples.datasets.SyntheticDataset`: :mod:`.geometry`
(primitives and their exact normals and curvatures), :mod:`.materials` (procedural textures),
:mod:`.scene` (the scene description), :mod:`.sampling` (random layouts and scenes),
:mod:`.appearance` (their materials and lights), :mod:`.edges` (the edge label), :mod:`.render`
(ray casting, shading and labels) and :mod:`.predictability` (how much of the image the labels
predict).
"""

from .appearance import APPEARANCES
from .geometry import ROOM_FACES, Box, Cylinder, Room, Sphere
from .materials import PATTERNS, Material
from .render import RenderedScene, cast_rays, render_scene
from .sampling import Layout, SceneConfig, sample_layout, sample_scene
from .scene import CLASS_IDS, CLASS_NAMES, Camera, Decal, Light, Scene, SceneObject

__all__ = [
    "APPEARANCES",
    "Box",
    "CLASS_IDS",
    "CLASS_NAMES",
    "Camera",
    "Cylinder",
    "Decal",
    "Layout",
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
    "sample_layout",
    "sample_scene",
]
