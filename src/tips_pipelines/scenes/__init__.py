"""tips-scenes: the embedded dataset of procedural 3-D scenes with exact depth, segmentation and captions.

``render_scene(seed, size)`` draws and renders one random scene; ``render(objects, camera, size)`` ray-casts a
given list of objects (for placing known objects at known positions); ``main`` is the ``tips-scenes`` command.
"""

from .cli import main
from .generate import Scene, render_scene, scene_seed
from .render import CLASS_NAMES, DEPTH_MIN, MAX_DEPTH, Camera, Environment, Render, SceneObject, render

__all__ = [
    "CLASS_NAMES", "DEPTH_MIN", "MAX_DEPTH", "Camera", "Environment", "Render", "Scene", "SceneObject",
    "main", "render", "render_scene", "scene_seed",
]
