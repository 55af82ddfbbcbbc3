"""tips-scenes: exact geometry of the ray caster, determinism, captions, and the files the command writes."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from tips_pipelines.scenes import CLASS_NAMES, MAX_DEPTH, Camera, Environment, SceneObject, main, render, render_scene
from tips_pipelines.scenes.captions import ObjectFacts, alt_text
from tips_pipelines.scenes.generate import compose_captions, min_visible_pixels, scene_seed

SPHERE, CUBE, CYLINDER, CONE = (CLASS_NAMES.index(n) for n in ("sphere", "cube", "cylinder", "cone"))


def pixel_ray(camera: Camera, size: int, row: int, col: int) -> np.ndarray:
    """World direction (3,) of a pixel's centre ray with unit forward component, derived from pitch/yaw alone."""
    half = math.tan(math.radians(camera.fov) / 2)
    xc = ((col + 0.5) / size * 2 - 1) * half
    yc = -((row + 0.5) / size * 2 - 1) * half
    cp, sp, cy, sy = math.cos(camera.pitch), math.sin(camera.pitch), math.cos(camera.yaw), math.sin(camera.yaw)
    forward = np.array([sy * cp, -sp, cy * cp])
    right = np.array([cy, 0.0, -sy])
    up = np.array([sy * sp, cp, cy * sp])
    return xc * right + yc * up + forward


def sphere_z_depth(origin: np.ndarray, ray: np.ndarray, centre: np.ndarray, radius: float) -> float:
    """Near root of |o + t·d − c|² = r² in float64 (t is the z-depth because d has unit forward component)."""
    oc = origin - centre
    a, b, c = ray @ ray, oc @ ray, oc @ oc - radius**2
    return (-b - math.sqrt(b * b - a * c)) / a


def test_sphere_on_the_optical_axis_has_z_depth_d_minus_r_at_the_centre_pixel():
    camera = Camera(position=(0.0, 1.5, 0.0), pitch=0.1, yaw=0.3, fov=50.0)
    size, d, r = 65, 6.0, 0.5  # odd size: the centre pixel's ray is the optical axis
    origin = np.asarray(camera.position)
    centre = origin + d * pixel_ray(camera, size, size // 2, size // 2)
    out = render([SceneObject("sphere", tuple(centre), r)], camera, size)
    assert out.seg[size // 2, size // 2] == SPHERE
    assert out.depth[size // 2, size // 2] == pytest.approx(d - r, abs=1e-3)
    for row, col in [(size // 2 + 2, size // 2 - 3), (size // 2 - 4, size // 2 + 1)]:
        expected = sphere_z_depth(origin, pixel_ray(camera, size, row, col), centre, r)
        assert out.seg[row, col] == SPHERE
        assert out.depth[row, col] == pytest.approx(expected, abs=1e-3)


def test_ground_depth_matches_the_analytic_plane_intersection_and_sky_is_invalid():
    camera = Camera(position=(0.0, 1.7, 0.0), pitch=math.radians(12), yaw=0.7, fov=55.0)
    size = 64
    out = render([], camera, size)
    for row, col in [(63, 10), (50, 40), (40, 5)]:
        ray = pixel_ray(camera, size, row, col)
        assert out.seg[row, col] == 1  # ground
        assert out.depth[row, col] == pytest.approx(1.7 / -ray[1], abs=1e-3)
    assert out.seg[0, 0] == 0 and out.depth[0, 0] == 0  # sky
    rays_down = [(r, pixel_ray(camera, size, r, 0)) for r in range(size)]
    far = [r for r, ray in rays_down if ray[1] < 0 and 1.7 / -ray[1] > MAX_DEPTH]
    assert far and out.seg[far[0], 0] == 1 and out.depth[far[0], 0] == 0  # ground beyond MAX_DEPTH: invalid depth


@pytest.mark.parametrize(
    "obj, expected_depth, expected_class",
    [
        (SceneObject("cube", (0.0, 1.0, 5.0), 0.5), 4.5, CUBE),
        (SceneObject("cube", (0.0, 1.0, 5.0), 0.5, yaw=math.pi / 4), 5.0 - 0.5 * math.sqrt(2), CUBE),
        (SceneObject("cylinder", (0.0, 1.0, 5.0), 0.5, height=1.0), 4.5, CYLINDER),
        (SceneObject("cone", (0.0, 1.0, 5.0), 0.5, height=1.0), 4.75, CONE),  # radius 0.25 at mid-height
    ],
)
def test_solids_straight_ahead_have_exact_centre_depth(obj, expected_depth, expected_class):
    camera = Camera(position=(0.0, 1.0, 0.0), pitch=0.0, fov=40.0)
    out = render([obj], camera, 33)
    assert out.seg[16, 16] == expected_class
    assert out.depth[16, 16] == pytest.approx(expected_depth, abs=1e-3)


def test_the_nearest_object_wins_whatever_the_list_order():
    camera = Camera(position=(0.0, 1.0, 0.0), pitch=0.0, fov=40.0)
    cube = SceneObject("cube", (0.0, 1.0, 4.0), 0.5, colour="blue")
    sphere = SceneObject("sphere", (0.0, 1.0, 8.0), 1.5, colour="red")  # larger on screen: peeks out around the cube
    a, b = render([cube, sphere], camera, 65), render([sphere, cube], camera, 65)
    assert a.seg[32, 32] == CUBE and a.depth[32, 32] == pytest.approx(3.5, abs=1e-3)
    np.testing.assert_array_equal(a.seg, b.seg)
    np.testing.assert_array_equal(a.depth, b.depth)
    assert a.pixel_counts[0] > 0 and a.pixel_counts[1] > 0
    assert (a.seg == SPHERE).sum() == a.pixel_counts[1]
    col = next(c for c in range(32, 65) if a.seg[32, c] == SPHERE)
    expected = sphere_z_depth(np.asarray(camera.position), pixel_ray(camera, 65, 32, col), np.array(sphere.center), 1.5)
    assert a.depth[32, col] == pytest.approx(expected, abs=1e-3)


def test_an_object_casts_a_hard_shadow_straight_down_under_an_overhead_light():
    camera = Camera(position=(0.0, 2.5, 0.0), pitch=0.35, fov=50.0)
    env = Environment(light_dir=(0.0, 1.0, 0.0))
    ball = SceneObject("sphere", (0.0, 1.0, 6.0), 0.4)
    size = 96
    lit, shadowed = render([], camera, size, env), render([ball], camera, size, env)
    ground = (lit.seg == 1) & (shadowed.seg == 1) & (lit.depth > 0)
    points = np.asarray(camera.position)[:, None] + lit.depth.reshape(-1) * camera.rays(size)  # (3, N)
    dist = np.hypot(points[0], points[2] - 6.0).reshape(size, size)
    darker = shadowed.image.astype(int).sum(-1) < lit.image.astype(int).sum(-1)
    assert (darker & ground).any()
    assert dist[darker & ground].max() < 0.45
    assert darker[ground & (dist < 0.35)].all()


def test_render_scene_is_deterministic_for_a_seed():
    a, b, c = render_scene(123, 64), render_scene(123, 64), render_scene(124, 64)
    for field in ("image", "depth", "seg", "instance"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert (a.alt_text, a.captions) == (b.alt_text, b.captions)
    assert not np.array_equal(a.image, c.image)
    assert len({scene_seed(0, split, 7) for split in ("pretrain", "train", "val")}) == 3


def test_scene_annotations_agree_with_each_other():
    scene = render_scene(5, 96)
    assert scene.image.shape == (96, 96, 3) and scene.image.dtype == np.uint8
    assert scene.depth.dtype == np.float32 and scene.seg.dtype == np.uint8
    assert ((scene.seg == 0) <= (scene.depth == 0)).all()  # sky has invalid depth
    is_object = scene.instance >= 0
    np.testing.assert_array_equal(is_object, scene.seg >= 2)
    for i in scene.visible:
        assert (scene.seg[scene.instance == i] == CLASS_NAMES.index(scene.objects[i].shape)).all()


@pytest.mark.parametrize("seed", range(12))
def test_captions_mention_colour_and_shape_of_every_visible_object(seed):
    scene = render_scene(seed, 96)
    assert scene.captions[0] == scene.caption and len(scene.captions) == 2
    for i in scene.visible:
        name = f"{scene.objects[i].colour} {scene.objects[i].shape}"
        assert name in scene.caption.lower()
        assert name in scene.captions[1].lower() or f"{name}s" in scene.captions[1].lower()
    assert scene.environment.ground_name in scene.caption


def test_captions_leave_out_hidden_objects_and_state_left_right_relations():
    camera = Camera(position=(0.0, 1.5, 0.0), pitch=0.15, fov=50.0)
    env = Environment()
    hidden = [SceneObject("cube", (0.0, 1.0, 5.0), 1.0, colour="blue"),
              SceneObject("sphere", (0.0, 0.4, 9.0), 0.4, colour="red")]  # behind the cube
    out = render(hidden, camera, 64, env)
    visible = [o for o, n in zip(hidden, out.pixel_counts) if n >= min_visible_pixels(64)]
    _, (caption, short) = compose_captions(visible, camera, env, np.random.default_rng(0))
    assert "blue cube" in caption and "sphere" not in caption and "sphere" not in short

    side_by_side = [SceneObject("sphere", (-1.5, 0.5, 6.0), 0.5, colour="red", size="small"),
                    SceneObject("cone", (1.5, 0.6, 6.0), 0.6, height=1.2, colour="green")]
    _, (caption, _) = compose_captions(side_by_side, camera, env, np.random.default_rng(0))
    assert re.search(r"small red sphere.* left of a large green cone", caption), caption
    in_line = [SceneObject("cube", (0.0, 0.5, 4.0), 0.5, colour="white"),
               SceneObject("cylinder", (0.3, 0.5, 9.0), 0.5, height=1.0, colour="yellow")]
    _, (caption, _) = compose_captions(in_line, camera, env, np.random.default_rng(0))
    assert "in front of" in caption or "behind" in caption, caption


def test_alt_text_is_noisy_like_web_alt_text():
    facts = [ObjectFacts("sphere", "red", "large", -1.0, 5.0), ObjectFacts("cube", "blue", "small", 1.0, 7.0)]
    texts = [alt_text(facts, "checkered grey floor", np.random.default_rng(i)) for i in range(300)]
    assert any(re.match(r"^(IMG_|DSC_?|render_|scene|Screenshot_|image)\d{4}", t) for t in texts)  # file names
    assert any(t in ("photo", "3d render", "image", "untitled") for t in texts)  # generic
    assert any("red" not in t.lower() and "blue" not in t.lower() for t in texts)  # colour missing
    assert any(("red" in t.lower()) != ("blue" in t.lower()) for t in texts)  # an object missing
    assert len(set(texts)) > 50


def run_cli(out: Path, *extra: str) -> None:
    args = ["--out", str(out), "--num-pretrain", "5", "--num-train", "3", "--num-val", "2", "--resolution", "48",
            "--seed", "1", "--shard-size", "2", "--num-workers", "1", *extra]
    assert main(args) == 0


def test_cli_writes_webdataset_shards_probe_split_and_classes(tmp_path, capsys):
    run_cli(tmp_path)
    manifest = json.loads((tmp_path / "pretrain" / "manifest.json").read_text())
    assert [s["count"] for s in manifest["shards"]] == [2, 2, 1]
    urls = [str(tmp_path / "pretrain" / s["name"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"scene-{i:06d}" for i in range(5)]
    for s in samples:
        meta = json.loads(s["json"])
        assert meta["source"] == "tips-scenes" and len(meta["synthetic_captions"]) == 2
        assert isinstance(s["txt"].decode(), str)
        assert Image.open(io.BytesIO(s["jpg"])).size == (48, 48)
    first = json.loads(samples[0]["json"])
    assert render_scene(first["seed"], 48).captions == first["synthetic_captions"]

    classes = json.loads((tmp_path / "probe" / "classes.json").read_text())
    assert [c["name"] for c in classes["classes"]][:2] == ["sky", "ground"]
    assert [c["is_object"] for c in classes["classes"]] == [False, False] + [True] * (len(CLASS_NAMES) - 2)
    assert classes["ignore_index"] == 255 and 0 < classes["depth_min"] < classes["depth_max"]

    train = tmp_path / "probe" / "train"
    records = [json.loads(line) for line in (train / "captions.jsonl").read_text().splitlines()]
    assert [r["key"] for r in records] == ["train-000000", "train-000001", "train-000002"]
    depth = np.array(Image.open(train / "train-000000.depth.png"))
    seg = np.array(Image.open(train / "train-000000.seg.png"))
    rgb = Image.open(train / "train-000000.png")
    assert depth.dtype == np.uint16 and seg.dtype == np.uint8 and rgb.mode == "RGB" and rgb.size == (48, 48)
    scene = render_scene(records[0]["seed"], 48)
    np.testing.assert_array_equal(depth, np.round(scene.depth * 1000).astype(np.uint16))  # millimetres
    np.testing.assert_array_equal(seg, scene.seg)
    assert len(list((tmp_path / "probe" / "val").glob("*.seg.png"))) == 2


def test_cli_rerun_is_a_no_op_and_force_regenerates_identical_bytes(tmp_path, capsys):
    run_cli(tmp_path)
    shard = tmp_path / "pretrain" / "shard-000000.tar"
    before, stamp = shard.read_bytes(), shard.stat().st_mtime_ns
    capsys.readouterr()
    run_cli(tmp_path)
    assert "up to date" in capsys.readouterr().out
    assert shard.stat().st_mtime_ns == stamp
    run_cli(tmp_path, "--force", "--num-workers", "2")  # the process pool must give the same bytes in the same order
    assert shard.read_bytes() == before
    run_cli(tmp_path, "--num-val", "1")  # other arguments: regenerated, stale files gone
    assert len(list((tmp_path / "probe" / "val").glob("*.seg.png"))) == 1
