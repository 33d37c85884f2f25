"""Weight files: safetensors always, pickled torch files only when the caller opted in."""

from __future__ import annotations

from pathlib import Path

import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class UnsafeWeightsError(ValueError):
    """Only pickled weights exist and the caller did not pass ``allow_pickle=True``."""


def has_safetensors(folder: Path) -> bool:
    return any(folder.glob("*.safetensors"))


def pickle_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())


def require_loadable(folder: Path, *, allow_pickle: bool) -> bool:
    """Check that ``folder`` has weights we may load; return True when safetensors are used."""
    if has_safetensors(folder):
        return True
    pickled = pickle_files(folder)
    if not pickled:
        raise FileNotFoundError(f"no weights in {folder}: expected *.safetensors")
    if not allow_pickle:
        raise UnsafeWeightsError(
            f"{folder} has only pickled weights ({', '.join(p.name for p in pickled)}); pickle can run "
            f"arbitrary code when loaded. Convert them to safetensors, or pass allow_pickle=True if you trust them."
        )
    return False


def load_state_dict(folder: Path, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """The tensors of a small module folder (a Dense projection), refusing pickle by default.
    Even when allowed, pickles are read with ``weights_only=True``."""
    if require_loadable(folder, allow_pickle=allow_pickle):
        from safetensors.torch import load_file

        state: dict[str, torch.Tensor] = {}
        for file in sorted(folder.glob("*.safetensors")):
            state.update(load_file(str(file)))
        return state
    state = {}
    for file in pickle_files(folder):
        state.update(torch.load(file, map_location="cpu", weights_only=True))
    return state
