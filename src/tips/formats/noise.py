"""Known warnings of the libraries an export uses that tell the user nothing they can act on, filtered by their
exact text (everything else from those loggers still shows):

- ``torch.utils._pytree``: "<enum ...> is an Enum subclass and is now natively supported by torch.compile ...",
  logged when torchao registers its enums on import (transformers and ONNX exports import it);
- onnxruntime's "Please consider to run pre-processing before quantization" hint, logged on the root logger once
  per ``quantize_dynamic`` call: our graphs are exported with shapes already inferred.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

KNOWN = {
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported by torch.compile",),
    "": ("Please consider to run pre-processing before quantization", "Please consider pre-processing before quantization"),
}


class _DropKnown(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


@contextlib.contextmanager
def known_noise_filtered() -> Iterator[None]:
    """Within the block, drop exactly the log records listed in :data:`KNOWN` (by logger and message text)."""
    installed = [(logging.getLogger(name or None), _DropKnown(fragments)) for name, fragments in KNOWN.items()]
    for logger, f in installed:
        logger.addFilter(f)
    try:
        yield
    finally:
        for logger, f in installed:
            logger.removeFilter(f)
