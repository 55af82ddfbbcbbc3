"""Exact ray intersections and surface normals of the scene solids (sphere, cube, cylinder, cone).

Each solid is given by its bounding-box centre c, ``radius`` and full ``height`` (see ``SceneObject``);
cylinders and cones stand upright (axis +y), the cone's apex on top, the cube turned by ``yaw`` about +y.
Rays are o + t·d with o and d of shape (3, M) or (3, 1) (broadcast), d not necessarily unit length;
misses give t = inf.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

SHAPES: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone")
_EPS = 1e-5


class Solid(Protocol):
    """What the geometry needs of an object (``render.SceneObject`` has it); keeps this module free of ``render``."""

    shape: str
    center: tuple[float, float, float]
    radius: float
    height: float
    yaw: float


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product over the first axis: (3, ...) · (3, ...) → (...), broadcasting the rest."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def bounding_radius(obj: Solid) -> float:
    """Radius of a sphere about ``obj.center`` that contains the solid."""
    if obj.shape == "sphere":
        return obj.radius
    horizontal = obj.radius * math.sqrt(2) if obj.shape == "cube" else obj.radius
    return math.hypot(horizontal, obj.height / 2)


def intersect(obj: Solid, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Nearest positive ray parameter of the hit with ``obj``: (M,) float32, inf where the ray misses."""
    q = o - np.asarray(obj.center, np.float32)[:, None]  # ray origins relative to the centre
    m = max(q.shape[1], d.shape[1])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = _INTERSECT[obj.shape](obj, q, d)
    return np.broadcast_to(t, (m,)).astype(np.float32)


def normal(obj: Solid, p: np.ndarray) -> np.ndarray:
    """Outward unit normals at surface points p (3, M) of ``obj``: (3, M)."""
    n = _NORMAL[obj.shape](obj, p - np.asarray(obj.center, np.float32)[:, None])
    return n / np.maximum(np.sqrt(dot(n, n)), 1e-12)


def _quadratic_roots(a: np.ndarray, half_b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both real roots of a·t² + 2·half_b·t + c = 0 (NaN without real roots), in the cancellation-free form."""
    disc = half_b * half_b - a * c
    root = np.sqrt(np.where(disc >= 0, disc, np.nan))
    qq = -(half_b + np.copysign(root, half_b))
    return qq / a, c / qq


def _nearest(*candidates: np.ndarray) -> np.ndarray:
    """Element-wise smallest candidate t (each (M,), inf = invalid)."""
    t = candidates[0]
    for cand in candidates[1:]:
        t = np.minimum(t, cand)
    return t


def _positive(t: np.ndarray, valid: np.ndarray | bool) -> np.ndarray:
    """t where valid and ahead of the origin, else inf (NaN counts as invalid)."""
    return np.where(valid & (t > _EPS), t, np.inf)


def _sphere(obj: Solid, q: np.ndarray, d: np.ndarray) -> np.ndarray:
    t0, t1 = _quadratic_roots(dot(d, d), dot(q, d), dot(q, q) - obj.radius**2)
    return _nearest(_positive(t0, True), _positive(t1, True))


def _cap(q: np.ndarray, d: np.ndarray, y: float, radius: float) -> np.ndarray:
    """Hit with the horizontal disc at local height y of the given radius: (M,)."""
    t = (y - q[1]) / d[1]
    x, z = q[0] + t * d[0], q[2] + t * d[2]
    return _positive(t, x * x + z * z <= radius * radius)


def _within_height(q: np.ndarray, d: np.ndarray, t: np.ndarray, half_height: float) -> np.ndarray:
    return np.abs(q[1] + t * d[1]) <= half_height


def _cylinder(obj: Solid, q: np.ndarray, d: np.ndarray) -> np.ndarray:
    h = obj.height / 2
    a = d[0] ** 2 + d[2] ** 2
    half_b = q[0] * d[0] + q[2] * d[2]
    c = q[0] ** 2 + q[2] ** 2 - obj.radius**2
    sides = [_positive(t, _within_height(q, d, t, h)) for t in _quadratic_roots(a, half_b, c)]
    return _nearest(*sides, _cap(q, d, h, obj.radius), _cap(q, d, -h, obj.radius))


def _cone(obj: Solid, q: np.ndarray, d: np.ndarray) -> np.ndarray:
    # side: x² + z² = k²·(h/2 − y)², restricted to −h/2 ≤ y ≤ h/2 (the other nappe is rejected)
    h = obj.height / 2
    k2 = (obj.radius / obj.height) ** 2
    apex_gap = h - q[1]
    a = d[0] ** 2 + d[2] ** 2 - k2 * d[1] ** 2
    half_b = q[0] * d[0] + q[2] * d[2] + k2 * apex_gap * d[1]
    c = q[0] ** 2 + q[2] ** 2 - k2 * apex_gap**2
    sides = [_positive(t, _within_height(q, d, t, h)) for t in _quadratic_roots(a, half_b, c)]
    return _nearest(*sides, _cap(q, d, -h, obj.radius))


def _yaw_matrix(yaw: float) -> np.ndarray:
    """Rotation about +y taking local to world coordinates: v_world = R @ v_local, (3, 3)."""
    cy, sy = math.cos(yaw), math.sin(yaw)
    return np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], np.float32)


def _cube_half_extents(obj: Solid) -> np.ndarray:
    return np.array([obj.radius, obj.height / 2, obj.radius], np.float32)[:, None]  # (3, 1)


def _cube(obj: Solid, q: np.ndarray, d: np.ndarray) -> np.ndarray:
    rot_t = _yaw_matrix(obj.yaw).T  # world → local
    ql, dl = rot_t @ q, rot_t @ d
    half = _cube_half_extents(obj)
    inv = 1.0 / dl
    t1, t2 = (-half - ql) * inv, (half - ql) * inv
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    # fmax/fmin skip the NaN of 0·inf (a ray inside a slab's plane and parallel to it)
    t_near = np.fmax(np.fmax(near[0], near[1]), near[2])
    t_far = np.fmin(np.fmin(far[0], far[1]), far[2])
    return _positive(t_near, t_far >= t_near)


def _sphere_normal(obj: Solid, q: np.ndarray) -> np.ndarray:
    return q


def _cylinder_normal(obj: Solid, q: np.ndarray) -> np.ndarray:
    radial = np.sqrt(q[0] ** 2 + q[2] ** 2)
    on_cap = np.abs(np.abs(q[1]) - obj.height / 2) < np.abs(radial - obj.radius)
    zero = np.zeros_like(radial)
    return np.where(on_cap, np.stack([zero, np.sign(q[1]), zero]), np.stack([q[0], zero, q[2]]))


def _cone_normal(obj: Solid, q: np.ndarray) -> np.ndarray:
    k = obj.radius / obj.height
    apex_gap = obj.height / 2 - q[1]
    radial = np.sqrt(q[0] ** 2 + q[2] ** 2)
    on_base = np.abs(q[1] + obj.height / 2) < np.abs(radial - k * apex_gap)
    zero = np.zeros_like(radial)
    side = np.stack([q[0], k * k * apex_gap, q[2]])  # gradient of x² + z² − k²·(h/2 − y)²
    return np.where(on_base, np.stack([zero, zero - 1, zero]), side)


def _cube_normal(obj: Solid, q: np.ndarray) -> np.ndarray:
    rot = _yaw_matrix(obj.yaw)
    ql = rot.T @ q
    axis = np.argmax(np.abs(ql) / _cube_half_extents(obj), axis=0)  # the face the point lies on
    cols = np.arange(ql.shape[1])
    nl = np.zeros_like(ql)
    nl[axis, cols] = np.sign(ql[axis, cols])
    return rot @ nl


_INTERSECT = {"sphere": _sphere, "cube": _cube, "cylinder": _cylinder, "cone": _cone}
_NORMAL = {"sphere": _sphere_normal, "cube": _cube_normal, "cylinder": _cylinder_normal, "cone": _cone_normal}
