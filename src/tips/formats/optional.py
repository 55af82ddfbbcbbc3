"""Optional dependencies (deploy: onnx, onnxruntime, torchao; index: faiss, pyarrow; serve: fastapi, uvicorn,
prometheus-client): imported on use, with the
install command."""

from __future__ import annotations

DEPLOY_INSTALL = "pip install 'tips[deploy]'  (or: pip install onnx onnxruntime onnxscript torchao)"
INSTALL = {
    "deploy": DEPLOY_INSTALL,
    "index": "pip install 'tips[index]'  (or: pip install faiss-cpu pyarrow)",
    "serve": "pip install 'tips[serve]'  (or: pip install fastapi uvicorn prometheus-client)",
}


def require(module: str, feature: str, extra: str = "deploy"):
    """Import an optional dependency of ``extra``, or raise an ImportError that names the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{feature} needs the optional package {module.split('.')[0]!r}: {INSTALL[extra]}") from e
