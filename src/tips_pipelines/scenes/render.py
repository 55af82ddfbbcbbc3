"""Vectorised ray casting of procedural scenes: solid shapes on a textured ground plane under a sky.

World frame: metres, +y up, the ground is the plane y = 0. Every ray direction has a unit component along the
camera's optical axis, so the ray parameter t of a hit *is* its z-depth (distance along the optical axis).
Vectors of many rays are stored as (3, N) float32 arrays (one contiguous row per coordinate, N = H·W rays,
row-major over the image): element-wise numpy on contiguous rows is an order of magnitude faster than on (N, 3).

Surface normals are exact: the outward unit normal of the solid (or the ground's +y) at each ray's hit point,
rotated into the camera frame (x right, y up, z forward), so a surface facing the camera has n_z < 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import shapes
from .shapes import SHAPES

RGB = tuple[float, float, float]
Vec3 = tuple[float, float, float]
CLASS_NAMES: tuple[str, ...] = ("sky", "ground") + SHAPES
SKY, GROUND = 0, 1
CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}

COLOURS: dict[str, RGB] = {
    "red": (0.82, 0.13, 0.11),
    "orange": (0.95, 0.50, 0.10),
    "yellow": (0.93, 0.82, 0.15),
    "green": (0.18, 0.62, 0.22),
    "blue": (0.14, 0.30, 0.85),
    "purple": (0.52, 0.22, 0.70),
    "pink": (0.95, 0.50, 0.68),
    "white": (0.92, 0.92, 0.90),
}

DEPTH_MIN = 1.0  # metres; no visible surface is nearer in sampled scenes (camera ≥ 1.3 m, objects ≥ 3 m ahead)
MAX_DEPTH = 30.0  # metres; surfaces farther away (the ground near the horizon) get depth 0 = invalid
_SHADOW_BIAS = 1e-3


@dataclass(frozen=True)
class Camera:
    """A pinhole camera for square images; ``pitch`` > 0 looks down, ``yaw`` turns about +y (0 looks along +z)."""

    position: Vec3 = (0.0, 1.6, 0.0)
    pitch: float = 0.2
    yaw: float = 0.0
    fov: float = 55.0  # degrees, vertical = horizontal

    def basis(self) -> np.ndarray:
        """Rows (right, up, forward) of the camera in world coordinates, (3, 3)."""
        cp, sp, cy, sy = math.cos(self.pitch), math.sin(self.pitch), math.cos(self.yaw), math.sin(self.yaw)
        forward = np.array([sy * cp, -sp, cy * cp])
        right = np.array([cy, 0.0, -sy])
        up = np.cross(forward, right)
        return np.stack([right, up, forward]).astype(np.float32)

    def rays(self, size: int) -> np.ndarray:
        """Ray directions through pixel centres, (3, size·size), each with forward component exactly 1."""
        half = math.tan(math.radians(self.fov) / 2)
        s = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1) * half  # (size,)
        xc, yc = np.meshgrid(s, -s)  # image rows go down, camera y goes up
        cam = np.stack([xc.ravel(), yc.ravel(), np.ones(size * size, np.float32)])  # (3, N) in camera axes
        return self.basis().T @ cam

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points (..., 3) in camera coordinates (x right, y up, z forward = z-depth), (..., 3)."""
        return (np.asarray(points, np.float32) - np.asarray(self.position, np.float32)) @ self.basis().T


@dataclass
class SceneObject:
    """A solid placed anywhere (sampled scenes stand it on the ground); ``center`` is its bounding-box centre.

    ``radius`` is the sphere radius, the cylinder/cone base radius, or half the cube's side; ``height`` is the
    full vertical extent (0 means 2·radius; always 2·radius for spheres). ``colour`` and ``size`` are caption
    attributes; ``albedo`` (RGB in [0, 1]) is what gets rendered.
    """

    shape: str
    center: Vec3
    radius: float
    height: float = 0.0
    colour: str = "red"
    size: str = "large"
    yaw: float = 0.0
    shiny: bool = False
    albedo: RGB | None = None  # defaults to COLOURS[colour]

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.shape == "sphere" or self.height <= 0:
            self.height = 2 * self.radius
        if self.albedo is None:
            self.albedo = COLOURS[self.colour]

    @property
    def class_id(self) -> int:
        return CLASS_ID[self.shape]


@dataclass(frozen=True)
class Environment:
    """Sky, ground texture and light. ``light_dir`` points *towards* the light (normalised on use)."""

    sky_top: RGB = (0.45, 0.62, 0.90)
    sky_horizon: RGB = (0.85, 0.90, 0.95)
    sky_name: str = "pale sky"
    ground: str = "checker"  # "checker" or "noise"
    ground_colours: tuple[RGB, RGB] = ((0.62, 0.62, 0.62), (0.38, 0.38, 0.38))
    ground_name: str = "checkered grey floor"
    tile: float = 1.0  # metres per checker square or noise cell
    light_dir: Vec3 = (0.4, 0.8, -0.45)
    light_colour: RGB = (1.0, 0.97, 0.92)
    ambient: float = 0.38
    fog: float = 60.0  # metres; e-folding distance of the haze towards the horizon colour
    texture_seed: int = 0


@dataclass
class Render:
    """Per-pixel outputs of :func:`render`."""

    image: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 z-depth in metres, 0 = sky or farther than MAX_DEPTH
    seg: np.ndarray  # (H, W) uint8 class ids (CLASS_NAMES)
    instance: np.ndarray  # (H, W) int16 index into the object list, -1 = sky or ground
    normals: np.ndarray  # (H, W, 3) float32 unit normals in the camera frame, 0 where depth is 0 (no surface)
    pixel_counts: list[int] = field(default_factory=list)  # visible pixels per object


def nearest_hit(objects: list[SceneObject], origin: np.ndarray, dirs: np.ndarray,
                skip: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest object hit per ray: t (N,) (inf = miss) and object index (N,) int16 (-1 = miss).

    Either one origin (3,) with directions (3, N) (camera rays) or origins (3, N) with one direction (3,)
    (shadow rays). ``skip`` (N,) names an object each ray must ignore (the surface it starts on).
    Each object is intersected only on the rays that pass its bounding sphere.
    """
    shared_origin = dirs.ndim == 2
    n = dirs.shape[1] if shared_origin else origin.shape[1]
    t_best = np.full(n, np.inf, np.float32)
    idx = np.full(n, -1, np.int16)
    if shared_origin:
        dd = shapes.dot(dirs, dirs)
    else:
        dd, od, oo = float(dirs @ dirs), shapes.dot(origin, dirs), shapes.dot(origin, origin)
    for i, obj in enumerate(objects):
        c = np.asarray(obj.center, np.float32)
        if shared_origin:  # proj = (c − o)·d and |c − o|², per ray
            proj, oc2 = shapes.dot(dirs, c - origin), float((c - origin) @ (c - origin))
        else:
            proj, oc2 = float(c @ dirs) - od, float(c @ c) - 2 * shapes.dot(origin, c) + oo
        r2 = shapes.bounding_radius(obj) ** 2
        cand = (oc2 - proj * proj / dd <= r2) & ((proj > 0) | (oc2 <= r2))
        if skip is not None:
            cand &= skip != i
        rows = np.flatnonzero(cand)
        if rows.size == 0:
            continue
        if shared_origin:
            t = shapes.intersect(obj, origin[:, None], dirs[:, rows])
        else:
            t = shapes.intersect(obj, origin[:, rows], dirs[:, None])
        closer = t < t_best[rows]
        t_best[rows[closer]] = t[closer]
        idx[rows[closer]] = i
    return t_best, idx


def render(objects: list[SceneObject], camera: Camera, size: int, env: Environment | None = None) -> Render:
    """Ray-cast ``objects`` on the ground plane seen by ``camera`` into size×size images."""
    env = env or Environment()
    if camera.position[1] <= 0:
        raise ValueError("the camera must be above the ground plane (y > 0)")
    origin = np.asarray(camera.position, np.float32)
    dirs = camera.rays(size)  # (3, N)
    t_obj, inst = nearest_hit(objects, origin, dirs)
    with np.errstate(divide="ignore"):
        t_ground = np.where(dirs[1] < 0, -origin[1] / dirs[1], np.inf).astype(np.float32)
    is_ground = t_ground < t_obj
    is_obj = np.isfinite(t_obj) & ~is_ground
    t = np.where(is_ground, t_ground, np.where(is_obj, t_obj, 0)).astype(np.float32)
    inst = np.where(is_obj, inst, -1).astype(np.int16)

    seg = np.full(size * size, SKY, np.uint8)
    seg[is_ground] = GROUND
    class_of = np.array([o.class_id for o in objects] + [SKY], np.uint8)
    seg[is_obj] = class_of[inst[is_obj]]
    depth = np.where(t <= MAX_DEPTH, t, 0).astype(np.float32)

    p = origin[:, None] + t * dirs  # (3, N) hit points (garbage on sky rays)
    normal = surface_normals(objects, p, inst)
    colour = _shade(objects, env, origin, dirs, t, p, normal, inst, is_ground, is_obj, size)  # (3, N) uint8
    cam_normal = camera.basis() @ normal * (depth > 0)  # world → camera frame; 0 = no surface (sky / too far)
    counts = np.bincount(inst[is_obj], minlength=len(objects)).tolist() if objects else []
    return Render(
        image=np.ascontiguousarray(colour.T).reshape(size, size, 3),
        depth=depth.reshape(size, size),
        seg=seg.reshape(size, size),
        instance=inst.reshape(size, size),
        normals=np.ascontiguousarray(cam_normal.T, dtype=np.float32).reshape(size, size, 3),
        pixel_counts=counts,
    )


def surface_normals(objects: list[SceneObject], p: np.ndarray, inst: np.ndarray) -> np.ndarray:
    """World-frame unit normals (3, N) at hit points p (3, N): the hit object's (``inst`` ≥ 0), else the ground's +y."""
    normal = np.zeros_like(p)
    normal[1] = 1.0
    for i, obj in enumerate(objects):
        rows = np.flatnonzero(inst == i)
        if rows.size:
            normal[:, rows] = shapes.normal(obj, p[:, rows])
    return normal


def _shade(objects: list[SceneObject], env: Environment, origin: np.ndarray, dirs: np.ndarray, t: np.ndarray,
           p: np.ndarray, normal: np.ndarray, inst: np.ndarray, is_ground: np.ndarray, is_obj: np.ndarray,
           size: int) -> np.ndarray:
    """Lambert + hemisphere ambient + Blinn-Phong on shiny objects, hard shadows, haze and sky: (3, N) uint8.

    Works on all N rays at once (sky rays carry harmless garbage until the sky overwrites them): cheaper than
    gathering the ~70 % of rays that hit something.
    """
    light = np.asarray(env.light_dir, np.float32)
    light /= np.linalg.norm(light)
    ray_len = np.sqrt(shapes.dot(dirs, dirs))  # (N,)
    albedo = _ground_albedo(env, p, t * ray_len, -dirs[1] / ray_len, size)  # (3, N)
    for i, obj in enumerate(objects):
        albedo[:, inst == i] = np.asarray(obj.albedo, np.float32)[:, None]

    lambert = np.maximum(shapes.dot(normal, light), 0) * (is_ground | is_obj)
    sunlit = np.flatnonzero(lambert > 0)
    shadow_origin = p[:, sunlit] + _SHADOW_BIAS * normal[:, sunlit]
    # convex solids cannot shadow their own sunlit side, so each shadow ray skips the object it starts on
    t_shadow, _ = nearest_hit(objects, shadow_origin, light, skip=inst[sunlit])
    lambert[sunlit[np.isfinite(t_shadow)]] = 0

    # light in linear space, with gamma 2 standing in for sRGB (albedo² in, square root out): cheap and close
    albedo *= albedo
    light_rgb = np.square(np.asarray(env.light_colour, np.float32))[:, None]
    sky_mean = 0.5 * (np.asarray(env.sky_top, np.float32) + np.asarray(env.sky_horizon, np.float32))
    ambient_rgb = (env.ambient * np.square(0.75 + 0.25 * sky_mean))[:, None]
    hemisphere = 0.75 + 0.25 * normal[1]  # surfaces facing the sky get more of it
    shaded = albedo * (hemisphere * ambient_rgb + (1 - env.ambient) * lambert * light_rgb)
    for i, obj in enumerate(objects):
        if obj.shiny:
            rows = np.flatnonzero((inst == i) & (lambert > 0))
            half = light[:, None] - dirs[:, rows] / ray_len[rows]
            half /= np.sqrt(shapes.dot(half, half))
            spec = np.clip(shapes.dot(normal[:, rows], half), 0, 1) ** 40
            shaded[:, rows] += 0.5 * spec * light_rgb
    haze = np.exp(-t * ray_len / env.fog)
    horizon = np.square(np.asarray(env.sky_horizon, np.float32))[:, None]
    colour = np.sqrt(shaded * haze + horizon * (1 - haze))
    sky = np.flatnonzero(~(is_ground | is_obj))
    colour[:, sky] = _sky(env, dirs[1, sky] / ray_len[sky])
    return (np.clip(colour, 0, 1) * 255 + 0.5).astype(np.uint8)


def _sky(env: Environment, elevation: np.ndarray) -> np.ndarray:
    """Vertical gradient from the horizon colour to the zenith colour: (M,) sine of elevation → (3, M)."""
    s = np.sqrt(np.clip(elevation / 0.6, 0, 1))
    top, horizon = np.asarray(env.sky_top, np.float32)[:, None], np.asarray(env.sky_horizon, np.float32)[:, None]
    return horizon + (top - horizon) * s


def _ground_albedo(env: Environment, p: np.ndarray, distance: np.ndarray, grazing: np.ndarray, size: int) -> np.ndarray:
    """Ground texture at points p (3, M) seen from ``distance`` (M,) at sine ``grazing`` (M,): (3, M).

    The pattern fades to its mean where one pixel covers about a whole tile (cheap anti-aliasing).
    """
    x, z = p[0] / env.tile, p[2] / env.tile
    if env.ground == "checker":
        pattern = ((np.floor(x) + np.floor(z)) % 2).astype(np.float32)
    elif env.ground == "noise":
        pattern = 0.65 * _value_noise(x, z, env.texture_seed) + 0.35 * _value_noise(4 * x, 4 * z, env.texture_seed + 1)
    else:
        raise ValueError(f"unknown ground texture {env.ground!r}")
    footprint = distance * 2 / size / np.maximum(grazing, 1e-3) / env.tile  # pixel size in tiles, roughly
    pattern = 0.5 + (pattern - 0.5) * np.clip(1.5 - footprint, 0, 1)
    c0, c1 = (np.asarray(c, np.float32) for c in env.ground_colours)
    return c0[:, None] + (c1 - c0)[:, None] * pattern


def _value_noise(x: np.ndarray, z: np.ndarray, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1] on the integer lattice: (M,), (M,) → (M,)."""
    ix, iz = np.floor(x), np.floor(z)
    fx, fz = x - ix, z - iz
    fx, fz = fx * fx * (3 - 2 * fx), fz * fz * (3 - 2 * fz)
    with np.errstate(invalid="ignore"):  # far beyond MAX_DEPTH the lattice index may overflow: any value will do
        ix, iz = ix.astype(np.int32).view(np.uint32), iz.astype(np.int32).view(np.uint32)
    salt = np.uint32(seed * 2654435761 & 0xFFFFFFFF)

    def lattice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        h = a * np.uint32(374761393) + b * np.uint32(668265263) + salt  # uint32 arithmetic wraps: a cheap hash
        h = (h ^ (h >> np.uint32(13))) * np.uint32(1274126177)
        return (h >> np.uint32(16)).astype(np.float32) / 65535.0

    top = lattice(ix, iz) * (1 - fx) + lattice(ix + 1, iz) * fx
    bottom = lattice(ix, iz + 1) * (1 - fx) + lattice(ix + 1, iz + 1) * fx
    return top * (1 - fz) + bottom * fz
