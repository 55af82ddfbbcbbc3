"""Random scenes: camera, environment and objects drawn from one seed, rendered and captioned."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .captions import ObjectFacts, alt_text, detailed_caption, light_phrase, short_caption
from .render import COLOURS, Camera, Environment, SceneObject, render
from .shapes import SHAPES

SPLITS: dict[str, int] = {"pretrain": 0, "train": 1, "val": 2}

# (name, zenith colour, horizon colour, light colour, light elevation range in degrees, ambient)
SKIES = (
    ("pale sky", (0.62, 0.74, 0.90), (0.88, 0.91, 0.95), (1.00, 0.97, 0.92), (30, 55), 0.38),
    ("clear blue sky", (0.20, 0.42, 0.85), (0.70, 0.82, 0.95), (1.00, 0.98, 0.94), (35, 60), 0.35),
    ("grey overcast sky", (0.60, 0.62, 0.66), (0.80, 0.81, 0.83), (0.80, 0.81, 0.85), (45, 70), 0.55),
    ("warm evening sky", (0.35, 0.30, 0.55), (0.98, 0.70, 0.45), (1.00, 0.78, 0.55), (12, 28), 0.40),
)
# (texture, name, colour a, colour b)
GROUNDS = (
    ("checker", "checkered grey floor", (0.62, 0.62, 0.62), (0.40, 0.40, 0.40)),
    ("checker", "black and white checkered floor", (0.88, 0.88, 0.88), (0.12, 0.12, 0.12)),
    ("checker", "checkered beige and brown floor", (0.80, 0.70, 0.55), (0.50, 0.36, 0.24)),
    ("noise", "grassy field", (0.20, 0.42, 0.15), (0.42, 0.62, 0.25)),
    ("noise", "sandy ground", (0.76, 0.66, 0.48), (0.90, 0.82, 0.62)),
    ("noise", "grey concrete floor", (0.45, 0.45, 0.46), (0.66, 0.66, 0.65)),
)
SIZE_RADIUS = {"small": (0.25, 0.40), "large": (0.50, 0.80)}  # metres
HEIGHT_RATIO = {"sphere": (2.0, 2.0), "cube": (1.7, 2.3), "cylinder": (1.2, 3.0), "cone": (1.5, 3.0)}
OBJECT_COUNT_PROBS = (0.15, 0.25, 0.30, 0.20, 0.10)  # 1 … 5 objects


@dataclass
class Scene:
    """One rendered scene with its annotations and captions."""

    image: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 z-depth in metres, 0 = sky or beyond MAX_DEPTH
    seg: np.ndarray  # (H, W) uint8 class ids (render.CLASS_NAMES)
    instance: np.ndarray  # (H, W) int16 index into ``objects``, -1 = sky or ground
    normals: np.ndarray  # (H, W, 3) float32 camera-frame unit normals (x right, y up, z forward), 0 = no surface
    objects: list[SceneObject]  # every placed object, visible or not
    visible: list[int]  # indices of the objects the captions describe
    camera: Camera
    environment: Environment
    alt_text: str
    caption: str  # the detailed synthetic caption
    captions: list[str]  # synthetic captions: [detailed, short]
    seed: int


def scene_seed(seed: int, split: str, index: int) -> int:
    """Per-image seed from the run seed, the split and the image index (independent streams per split)."""
    return int(np.random.SeedSequence([seed, SPLITS[split], index]).generate_state(1)[0])


def min_visible_pixels(size: int) -> int:
    """Pixels an object needs to be described: 0.1 % of the image, at least 4."""
    return max(4, round(1e-3 * size * size))


def sample_camera(rng: np.random.Generator) -> Camera:
    """Eye height 1.3–2 m, looking 8–16° down, field of view 50–60°, any heading."""
    return Camera(
        position=(0.0, float(rng.uniform(1.3, 2.0)), 0.0),
        pitch=math.radians(rng.uniform(8, 16)),
        yaw=float(rng.uniform(-math.pi, math.pi)),
        fov=float(rng.uniform(50, 60)),
    )


def sample_environment(rng: np.random.Generator, camera: Camera) -> Environment:
    """Sky, ground and sun; the sun is never straight behind the objects, so their colours stay readable."""
    sky_name, top, horizon, light_rgb, (lo, hi), ambient = SKIES[rng.integers(len(SKIES))]
    texture, ground_name, c0, c1 = GROUNDS[rng.integers(len(GROUNDS))]
    elevation = math.radians(rng.uniform(lo, hi))
    azimuth = camera.yaw + math.radians(rng.uniform(50, 310))  # 0 would be straight ahead of the camera
    light = (math.cos(elevation) * math.sin(azimuth), math.sin(elevation), math.cos(elevation) * math.cos(azimuth))
    return Environment(
        sky_top=top, sky_horizon=horizon, sky_name=sky_name, ground=texture, ground_colours=(c0, c1),
        ground_name=ground_name, tile=float(rng.uniform(0.7, 1.6)),
        light_dir=light, light_colour=light_rgb, ambient=ambient, texture_seed=int(rng.integers(1 << 30)),
    )


def sample_objects(rng: np.random.Generator, camera: Camera, max_tries: int = 60) -> list[SceneObject]:
    """1–5 non-overlapping objects standing on the ground inside the camera's horizontal field of view."""
    count = int(rng.choice(len(OBJECT_COUNT_PROBS), p=OBJECT_COUNT_PROBS)) + 1
    half_fov = math.tan(math.radians(camera.fov) / 2)
    cy, sy = math.cos(camera.yaw), math.sin(camera.yaw)
    objects: list[SceneObject] = []
    for _ in range(max_tries):
        if len(objects) == count:
            break
        shape = SHAPES[rng.integers(len(SHAPES))]
        size = "small" if rng.random() < 0.5 else "large"
        radius = float(rng.uniform(*SIZE_RADIUS[size]))
        height = radius * float(rng.uniform(*HEIGHT_RATIO[shape]))
        ahead = float(rng.uniform(3.0, 10.0))
        lateral = float(rng.uniform(-0.75, 0.75)) * ahead * half_fov
        x, z = lateral * cy + ahead * sy, -lateral * sy + ahead * cy  # camera-aligned → world, camera at origin
        if any(math.hypot(x - o.center[0], z - o.center[2]) < 1.42 * (radius + o.radius) + 0.1 for o in objects):
            continue
        colour = str(rng.choice(list(COLOURS)))
        albedo = tuple(float(c) for c in np.clip(np.asarray(COLOURS[colour]) * rng.uniform(0.9, 1.1, 3), 0, 1))
        objects.append(SceneObject(
            shape=shape, center=(x, height / 2, z), radius=radius, height=height, colour=colour, size=size,
            yaw=float(rng.uniform(0, math.pi / 2)), shiny=bool(rng.random() < 0.3), albedo=albedo,
        ))
    return objects


def object_facts(objects: list[SceneObject], camera: Camera) -> list[ObjectFacts]:
    """Caption facts (shape, colour, size, camera-space x and z-depth of the centre) per object."""
    cam = camera.to_camera(np.array([o.center for o in objects], np.float32).reshape(-1, 3))
    return [ObjectFacts(o.shape, o.colour, o.size, float(p[0]), float(p[2])) for o, p in zip(objects, cam)]


def compose_captions(visible: list[SceneObject], camera: Camera, env: Environment,
                     rng: np.random.Generator) -> tuple[str, list[str]]:
    """(alt-text, [detailed caption, short caption]) for the visible objects."""
    facts = object_facts(visible, camera)
    light = light_phrase(camera.basis() @ np.asarray(env.light_dir, np.float32))
    detailed = detailed_caption(facts, env.ground_name, env.sky_name, light, rng)
    return alt_text(facts, env.ground_name, rng), [detailed, short_caption(facts, env.ground_name)]


def render_scene(seed: int, size: int = 224) -> Scene:
    """Draw a scene from ``seed``, ray-cast it at size×size, and caption what is visible."""
    rng = np.random.default_rng(seed)
    camera = sample_camera(rng)
    env = sample_environment(rng, camera)
    objects = sample_objects(rng, camera)
    out = render(objects, camera, size, env)
    visible = [i for i, n in enumerate(out.pixel_counts) if n >= min_visible_pixels(size)]
    alt, captions = compose_captions([objects[i] for i in visible], camera, env, rng)
    return Scene(
        image=out.image, depth=out.depth, seg=out.seg, instance=out.instance, normals=out.normals, objects=objects,
        visible=visible, camera=camera, environment=env, alt_text=alt, caption=captions[0], captions=captions, seed=seed,
    )
