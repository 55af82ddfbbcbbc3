"""A real tips-serve for tests and the docs check: uvicorn on a free localhost port, in a thread of this process,
around a tiny random model with random heads and a small index of generated photos."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import torch
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app, port: int | None = None) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 in a thread; yields the base URL; stops it on exit."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def photos(folder: Path) -> list[Path]:
    """A few real photos (scikit-image's), at odd sizes, written as PNG."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    sizes = {"chelsea": (96, 64), "coffee": (80, 60), "astronaut": (70, 70), "rocket": (50, 90), "camera": (64, 64)}
    out = []
    for name, size in sizes.items():
        path = folder / f"{name}.png"
        Image.fromarray(getattr(data, name)()).resize(size).save(path)
        out.append(path)
    return out


def tiny_model():
    import tips

    torch.manual_seed(0)
    return tips.create_model("tiny", tokenizer="bpe", **{"text.depth": 1})  # 4 image blocks: DPT heads fit


def served(model, folder: Path, name: str = "tiny-test"):
    """A ServedModel with random heads for every task and a flat cls_alt index over :func:`photos`."""
    from tips.cli.serve import served_index
    from tips.index import Index
    from tips.index.queries import embed_images, model_space
    from tips.models.dpt import build_head
    from tips.serve import ServedModel

    torch.manual_seed(0)
    heads = {task: build_head(task, model.width).eval() for task in ("depth", "normals", "segmentation")}
    paths = photos(folder / "photos")
    vectors = embed_images(model, [Image.open(p) for p in paths], model.image_size, "cls_alt")
    space = model_space(model, name, "cls_alt")
    Index.build(vectors, {"id": [p.name for p in paths], "source": [str(p) for p in paths]}, space,
                max_memory=2**30).save(folder / "index")
    return ServedModel(model, name, heads, served_index(folder / "index", model, name), random=True)


def wait_healthy(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=10).raise_for_status().json()


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
