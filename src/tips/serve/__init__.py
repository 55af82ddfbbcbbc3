"""tips.serve: the HTTP server of ``tips-serve`` — an OpenAI-compatible ``/v1/embeddings``, dense predictions,
open-vocabulary segmentation, search over a ``tips-index`` folder, Prometheus metrics and a page, with dynamic
batching on one worker thread. May import ``tips.inference`` and ``tips.formats``; the index is handed in
(:class:`ServedIndex`) by the command line, which may import ``tips.index``.

fastapi, uvicorn and prometheus-client are the ``serve`` extra (``pip install 'tips[serve]'``).
"""

from typing import Any

from .batching import Batcher, QueueFull
from .forwards import ServedIndex, ServedModel
from .limits import ApiError, Limits, ServeOptions

__all__ = ["ApiError", "Batcher", "Limits", "QueueFull", "ServeOptions", "ServedIndex", "ServedModel", "create_app"]


def create_app(served: ServedModel, options: ServeOptions | None = None) -> Any:
    """:func:`tips.serve.app.create_app` (imported on call: the command line's ``--help`` needs no fastapi)."""
    from .app import create_app as create

    return create(served, options)
