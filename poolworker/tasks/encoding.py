"""Output encodings of vectors and matrices, as vLLM's ``encoding_format``/``embed_dtype``/
``endianness`` define them (``vllm/utils/serial_utils.py``, ``entrypoints/pooling/utils.py``).

- ``float``: the numbers in the JSON body (float32 values; ``embed_dtype`` does not apply).
- ``base64``: the array cast to ``embed_dtype``, flattened row by row, in ``endianness`` byte
  order, base64-encoded into the JSON body.
- ``bytes`` / ``bytes_only``: the same bytes, every item one after the other, as the raw record
  value; ``bytes`` adds a JSON ``metadata`` header (``binary_result``) saying where each item
  starts and ends and its shape, ``bytes_only`` sends the bytes alone.

bfloat16 and the fp8 types have no numpy dtype: they are cast with torch and their bits viewed
as a numpy type of the same width (float16, uint8), which is how vLLM writes them too.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

# embed_dtype → (torch dtype name or None for a plain numpy cast, the same-width type its bits
# are viewed as to leave torch)
_DTYPES: dict[str, tuple[str | None, str]] = {
    "float32": (None, "float32"),
    "float16": (None, "float16"),
    "bfloat16": ("bfloat16", "float16"),
    "fp8_e4m3": ("float8_e4m3fn", "uint8"),
    "fp8_e5m2": ("float8_e5m2", "uint8"),
}
BINARY_FORMATS = frozenset({"bytes", "bytes_only"})


def to_bytes(data: Any, embed_dtype: str = "float32", endianness: str = "native") -> bytes:
    """The array's values as ``embed_dtype`` in ``endianness`` order ("native" is this
    machine's), flattened in row order."""
    array = np.ascontiguousarray(data, dtype=np.float32).reshape(-1)
    torch_name, view = _DTYPES[embed_dtype]
    if torch_name is None:
        out = array.astype(view)
    else:
        import torch

        out = torch.from_numpy(array).to(getattr(torch, torch_name)).view(getattr(torch, view)).numpy()
    if endianness != "native" and endianness != sys.byteorder and out.itemsize > 1:
        out = out.byteswap()
    return out.tobytes()


def encode_json(data: Any, encoding_format: str, embed_dtype: str, endianness: str) -> Any:
    """What a vector or matrix becomes inside a JSON body: itself (float) or a base64 string."""
    if encoding_format == "base64":
        return base64.b64encode(to_bytes(data, embed_dtype, endianness)).decode("ascii")
    return data


def binary_result(body: Mapping[str, Any], value_key: str, embed_dtype: str, endianness: str) -> tuple[bytes, dict[str, Any]]:
    """A body whose ``data[i][value_key]`` are arrays → (the raw record value, vLLM's bytes
    metadata: the body without the arrays, and per item its ``index``, ``embed_dtype``,
    ``endianness``, byte range ``start``/``end`` in the value, and ``shape``)."""
    chunks: list[bytes] = []
    items: list[dict[str, Any]] = []
    offset = 0
    for entry in body["data"]:
        raw = to_bytes(entry[value_key], embed_dtype, endianness)
        chunks.append(raw)
        items.append({"index": entry["index"], "embed_dtype": embed_dtype, "endianness": endianness, "start": offset,
                      "end": offset + len(raw), "shape": list(np.shape(entry[value_key]))})
        offset += len(raw)
    metadata = {k: v for k, v in body.items() if k not in ("data", "object")}
    metadata["data"] = items
    return b"".join(chunks), metadata


def float32_base64(data: Any) -> str:
    """Standard base64 of the values as little-endian float32, rows flattened in order (what
    vLLM clients decode with ``np.frombuffer(b64decode(s), dtype="<f4")``)."""
    return base64.b64encode(to_bytes(data, "float32", "little")).decode("ascii")


__all__ = ["BINARY_FORMATS", "binary_result", "encode_json", "float32_base64", "to_bytes"]
