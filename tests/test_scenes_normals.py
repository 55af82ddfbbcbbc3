"""tips-scenes surface normals: exact at chosen pixels (≤ 1° after the 16-bit PNG round trip), invalid where
there is no surface, written to the probe split, and the 16-bit PNG codec itself."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from tips_pipelines.scenes import MAX_DEPTH, Camera, SceneObject, main, render, render_scene
from tips.io.png16 import (
    PNG16Error, decode_png16, encode_png16, normals_to_uint16, read_png16, uint16_to_normals,
)

from test_scenes import pixel_ray, sphere_z_depth


def camera_axes(camera: Camera) -> np.ndarray:
    """Rows (right, up, forward) from pitch and yaw alone (independent of Camera.basis)."""
    cp, sp, cy, sy = math.cos(camera.pitch), math.sin(camera.pitch), math.cos(camera.yaw), math.sin(camera.yaw)
    return np.array([[cy, 0.0, -sy], [sy * sp, cp, cy * sp], [sy * cp, -sp, cy * cp]])


def stored(normals: np.ndarray) -> np.ndarray:
    """What a reader of the probe split gets back: float → uint16 → PNG bytes → uint16 → unit normals."""
    return uint16_to_normals(decode_png16(encode_png16(normals_to_uint16(normals))))


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def test_sphere_and_ground_normals_equal_the_analytic_ones_in_the_camera_frame():
    camera = Camera(position=(0.0, 1.5, 0.0), pitch=0.15, yaw=0.4, fov=50.0)
    size, r = 65, 0.8
    origin = np.asarray(camera.position)
    centre = origin + 6.0 * pixel_ray(camera, size, size // 2, size // 2)
    centre[1] = 1.2  # above the ground, a little below the optical axis
    out = render([SceneObject("sphere", tuple(centre), r)], camera, size)
    n = stored(out.normals)
    axes = camera_axes(camera)
    checked = 0
    for row in range(0, size, 4):
        for col in range(0, size, 4):
            ray = pixel_ray(camera, size, row, col)
            if out.instance[row, col] == 0:
                p = origin + sphere_z_depth(origin, ray, centre, r) * ray
                expected = axes @ ((p - centre) / r)
            elif out.seg[row, col] == 1 and out.depth[row, col] > 0:
                expected = axes @ np.array([0.0, 1.0, 0.0])
            else:
                continue
            assert angle_deg(n[row, col], expected) <= 1.0, (row, col, n[row, col], expected)
            checked += 1
    assert checked > 50
    c = out.normals[size // 2, size // 2]
    assert c[2] < -0.5  # the sphere faces the camera: n_z < 0 in the camera frame


def face_pixels(camera: Camera, size: int, point, normal, inside) -> list[tuple[int, int]]:
    """Pixels whose ray meets the front-facing plane (point, normal) at a point where ``inside(p)`` holds.

    On a convex solid a front-facing face that a ray meets is the first surface it hits, so these pixels show
    that face.
    """
    origin, point, normal = np.asarray(camera.position), np.asarray(point), np.asarray(normal)
    hits = []
    for row in range(size):
        for col in range(size):
            ray = pixel_ray(camera, size, row, col)
            if ray @ normal >= 0:
                continue
            p = origin + ((point - origin) @ normal / (ray @ normal)) * ray
            if inside(p):
                hits.append((row, col))
    return hits


s2 = math.sqrt(0.5)


@pytest.mark.parametrize("obj, point, world_normal, inside", [
    (SceneObject("cube", (0.0, 1.0, 5.0), 0.5), (0, 1, 4.5), (0, 0, -1),  # front face
     lambda p: abs(p[0]) < 0.45 and abs(p[1] - 1.0) < 0.45),
    (SceneObject("cube", (0.0, 0.5, 5.0), 0.5, yaw=math.pi / 4), (-0.5 * s2, 0.5, 5 - 0.5 * s2), (-s2, 0, -s2),
     lambda p: abs((p[0] + 0.5 * s2) - (p[2] - 5 + 0.5 * s2)) < 0.9 * s2 and abs(p[1] - 0.5) < 0.45),  # left face
    (SceneObject("cube", (0.5, 0.4, 5.0), 0.4, yaw=0.3), (0.5, 0.8, 5.0), (0, 1, 0),  # top face, turned
     lambda p: max(abs(math.cos(0.3) * (p[0] - 0.5) - math.sin(0.3) * (p[2] - 5)),
                   abs(math.sin(0.3) * (p[0] - 0.5) + math.cos(0.3) * (p[2] - 5))) < 0.36),
    (SceneObject("cylinder", (0.0, 0.5, 5.0), 0.5, height=1.0), (0, 1.0, 5.0), (0, 1, 0),  # top cap
     lambda p: math.hypot(p[0], p[2] - 5.0) < 0.45),
])
def test_flat_faces_have_their_face_normal(obj, point, world_normal, inside):
    camera = Camera(position=(0.0, 1.6, 0.0), pitch=0.25, fov=40.0)
    size = 41
    out = render([obj], camera, size)
    pixels = face_pixels(camera, size, point, world_normal, inside)
    assert len(pixels) >= 4
    expected = camera_axes(camera) @ np.array(world_normal, float)
    n = stored(out.normals)
    for row, col in pixels:
        assert out.instance[row, col] == 0
        assert angle_deg(n[row, col], expected) <= 1.0, (row, col)


def test_cone_and_cylinder_sides_have_the_analytic_normal():
    camera = Camera(position=(0.0, 1.0, 0.0), pitch=0.0, fov=40.0)  # cone base at y 0.15, cylinder top at 1.7
    size = 65
    origin = np.asarray(camera.position)
    for shape, radius, height in (("cone", 0.6, 1.5), ("cylinder", 0.5, 1.6)):
        centre = np.array([0.3, 0.9, 5.0])
        out = render([SceneObject(shape, tuple(centre), radius, height=height)], camera, size)
        n = stored(out.normals)
        pixels = np.argwhere(out.instance == 0)  # the eye is between base and top: every hit is on the side
        assert len(pixels) > 100
        for row, col in pixels[::7]:
            p = origin + out.depth[row, col] * pixel_ray(camera, size, row, col)
            phi = math.atan2(p[2] - centre[2], p[0] - centre[0])
            # cone side: gradient of x² + z² − (r/h)²·(h/2 − y)² ∝ (h·cos φ, r, h·sin φ); cylinder: radial
            up = radius if shape == "cone" else 0.0
            expected = camera_axes(camera) @ np.array([height * math.cos(phi), up, height * math.sin(phi)])
            assert angle_deg(n[row, col], expected) <= 1.0, (shape, row, col)


def test_no_surface_and_too_far_pixels_are_invalid_zero_vectors():
    camera = Camera(position=(0.0, 1.7, 0.0), pitch=math.radians(12), fov=55.0)
    out = render([], camera, 64)
    assert np.all(out.normals[out.depth == 0] == 0)
    assert (out.depth == 0).sum() > 0 and (out.depth > 0).sum() > 0
    valid = out.depth > 0
    np.testing.assert_allclose(np.linalg.norm(out.normals[valid], axis=-1), 1.0, atol=1e-5)
    code = normals_to_uint16(out.normals)
    assert np.all(code[~valid] == 0) and np.all(code[valid].max(axis=-1) > 0)
    assert np.all(uint16_to_normals(code)[~valid] == 0)
    assert MAX_DEPTH > 0


def test_probe_split_holds_normals_png_and_pretrain_shards_only_when_asked(tmp_path):
    import webdataset as wds

    args = ["--num-pretrain", "2", "--num-train", "2", "--num-val", "1", "--resolution", "32", "--num-workers", "1"]
    assert main(["--out", str(tmp_path / "a"), *args]) == 0
    path = tmp_path / "a" / "probe" / "train" / "train-000000.normals.png"
    code = read_png16(path)
    assert code.shape == (32, 32, 3) and code.dtype == np.uint16
    assert Image.open(path).size == (32, 32)  # a standard PNG that other readers open too
    record = json.loads((tmp_path / "a" / "probe" / "train" / "captions.jsonl").read_text().splitlines()[0])
    scene = render_scene(record["seed"], 32)
    np.testing.assert_array_equal(code, normals_to_uint16(scene.normals))
    classes = json.loads((tmp_path / "a" / "probe" / "classes.json").read_text())
    assert "65535" in classes["normals_encoding"] and "z forward" in classes["normals_frame"]
    shard = str(tmp_path / "a" / "pretrain" / "shard-000000.tar")
    assert "normals.png" not in next(iter(wds.WebDataset(shard, shardshuffle=False)))
    assert main(["--out", str(tmp_path / "b"), *args, "--pretrain-normals"]) == 0
    sample = next(iter(wds.WebDataset(str(tmp_path / "b" / "pretrain" / "shard-000000.tar"), shardshuffle=False)))
    assert decode_png16(sample["normals.png"]).shape == (32, 32, 3)


def test_png16_round_trips_and_decodes_pillow_filtered_files():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 65536, (7, 9, 3)).astype(np.uint16)
    np.testing.assert_array_equal(decode_png16(encode_png16(rgb)), rgb)
    grey = (np.arange(12 * 20, dtype=np.uint16).reshape(12, 20) * 251) % 65535
    buf = io.BytesIO()
    Image.fromarray(grey.astype(np.uint16)).save(buf, format="PNG", optimize=True)  # Pillow picks row filters
    np.testing.assert_array_equal(decode_png16(buf.getvalue()), grey)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="PNG")
    with pytest.raises(PNG16Error, match="bit depth 8"):
        decode_png16(buf.getvalue())
    with pytest.raises(PNG16Error, match="signature"):
        decode_png16(b"GIF89a")


def test_shapes_does_not_import_render_so_there_is_no_cycle():
    import ast

    import tips_pipelines.scenes.shapes as shapes

    tree = ast.parse(open(shapes.__file__).read())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "render" not in imported and not any(m and m.endswith(".render") for m in imported)
