"""tips.io: bytes and images — how every tips job reads and writes files. Imports nothing else of tips.

- shard specs: :func:`expand_shards` (webdataset's brace and ``::`` expansion, as the training loader reads them);
- reproducible tar shards: :class:`ShardFile`, :func:`write_shard`, :func:`encode_sample` (fixed metadata,
  renamed into place when complete);
- atomic writes that honour the umask: :func:`atomic_file`, :func:`atomic_path`, :func:`replace_dir`,
  :func:`write_bytes_atomic`, :func:`write_text_atomic`, :func:`write_json_atomic`, and
  :func:`append_line` (one line, one ``O_APPEND`` write);
- digests: :func:`sha256_file`;
- images: :func:`decode_image` (bytes → a PIL image in its stored mode, the pixel limit checked per call from the
  header; one :class:`ImageDecodeError` with a reason); ``tips.models.to_rgb`` turns it into what a model reads;
- image sources: :func:`find_images` (folders, globs, list files, single images, webdataset shards → :class:`ImageRef`),
  :func:`read_bytes`, :func:`decode_ref`;
- config overrides: :func:`parse_override` (one dotted ``key=value``); bundled recipes: :func:`resolve_recipe`,
  :func:`list_recipes` (``--config NAME`` from any folder);
- lossless 16-bit PNGs (depth, surface normals): :func:`encode_png16`, :func:`read_png16`, :func:`normals_to_uint16` ….
"""

from .atomic import append_line, atomic_file, atomic_path, fsync_dir, replace_dir, write_bytes_atomic, write_json_atomic, write_text_atomic
from .png16 import (
    NORMALS_ENCODING,
    PNG16Error,
    decode_png16,
    encode_png16,
    normals_to_uint16,
    read_png16,
    uint16_to_normals,
    write_png16,
)
from .images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from .overrides import parse_override
from .recipes import describe_recipes, list_recipes, resolve_recipe
from .sources import ImageRef, decode_ref, find_images, read_bytes
from .hashing import sha256_file
from .shards import expand_shards
from .tar import ShardFile, archive_size, encode_member, encode_sample, write_shard

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageDecodeError",
    "decode_image",
    "ImageRef",
    "decode_ref",
    "find_images",
    "parse_override",
    "describe_recipes",
    "list_recipes",
    "resolve_recipe",
    "read_bytes",
    "NORMALS_ENCODING",
    "PNG16Error",
    "ShardFile",
    "archive_size",
    "append_line",
    "atomic_file",
    "atomic_path",
    "decode_png16",
    "encode_member",
    "encode_png16",
    "encode_sample",
    "expand_shards",
    "fsync_dir",
    "normals_to_uint16",
    "read_png16",
    "replace_dir",
    "sha256_file",
    "uint16_to_normals",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_png16",
    "write_shard",
    "write_text_atomic",
]
