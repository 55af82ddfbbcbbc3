"""The optional deploy dependencies (onnx, onnxruntime, torchao): imported on use, with the install command."""

from __future__ import annotations

DEPLOY_INSTALL = "pip install 'tips[deploy]'  (or: pip install onnx onnxruntime onnxscript torchao)"


def require(module: str, feature: str):
    """Import an optional deploy dependency, or raise an ImportError that names the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{feature} needs the optional package {module.split('.')[0]!r}: {DEPLOY_INSTALL}") from e
