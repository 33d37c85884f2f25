"""Read a Sentence-Transformers model folder's module files.

We read the configs that live beside the weights (``modules.json``, ``1_Pooling/config.json``,
``*_Dense``, ``Normalize``, ``sentence_bert_config.json``) rather than re-deriving them, and load
``Dense`` projections as plain torch layers.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .weights import load_state_dict

_POOLING_MODES = {
    "pooling_mode_cls_token": "CLS",
    "pooling_mode_mean_tokens": "MEAN",
    "pooling_mode_lasttoken": "LAST",
}
_UNSUPPORTED_MODES = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")
_MODE_NAMES = {"cls": "CLS", "mean": "MEAN", "lasttoken": "LAST"}


@dataclass
class STModules:
    """What the Sentence-Transformers files say; every field is None/empty when absent."""

    present: bool = False
    pooling_type: str | None = None
    has_pooling: bool = False
    normalize: bool = False
    max_seq_length: int | None = None
    do_lower_case: bool = False
    dense_dirs: list[Path] = field(default_factory=list)


def _read_json(path: Path) -> dict:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _pooling_type(config: dict, where: Path) -> str:
    if isinstance(config.get("pooling_mode"), str):
        mode = config["pooling_mode"].lower()
        if mode in _MODE_NAMES:
            return _MODE_NAMES[mode]
        raise ValueError(f"{where}: pooling_mode {mode!r} is not supported (CLS, MEAN, LAST are); override it with PoolerConfig(pooling_type=...)")
    chosen = [name for key, name in _POOLING_MODES.items() if config.get(key)]
    unsupported = [key for key in _UNSUPPORTED_MODES if config.get(key)]
    if unsupported or len(chosen) != 1:
        raise ValueError(
            f"{where}: pooling modes {unsupported or chosen} are not supported; exactly one of "
            f"CLS, MEAN or LAST is; override it with PoolerConfig(pooling_type=...)"
        )
    return chosen[0]


def read_st_modules(folder: Path) -> STModules:
    """Parse the Sentence-Transformers files of ``folder`` (no weights are loaded here)."""
    info = STModules()
    bert_config = folder / "sentence_bert_config.json"
    if bert_config.is_file():
        cfg = _read_json(bert_config)
        info.max_seq_length = cfg.get("max_seq_length")
        info.do_lower_case = bool(cfg.get("do_lower_case", False))
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return info
    info.present = True
    for module in sorted(_read_json(modules_file), key=lambda m: m.get("idx", 0)):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        sub = folder / module.get("path", "")
        if kind == "Pooling":
            info.has_pooling = True
            info.pooling_type = _pooling_type(_read_json(sub / "config.json"), sub / "config.json")
        elif kind == "Dense":
            info.dense_dirs.append(sub)
        elif kind == "Normalize":
            info.normalize = True
    return info


def activation_from_name(name: str | None) -> nn.Module:
    """Instantiate an activation named in a config, restricted to ``torch.nn.modules`` classes
    so a config file can never make us import arbitrary code."""
    if not name:
        return nn.Identity()
    if not name.startswith("torch.nn.modules."):
        raise ValueError(f"activation {name!r} refused: only torch.nn.modules.* classes are loaded from configs")
    module_name, cls_name = name.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"activation {name!r} is not a torch module class")  # noqa: TRY004 - a bad value in a config file
    return cls()


def load_dense(folder: Path, *, allow_pickle: bool) -> nn.Module:
    """A Sentence-Transformers ``Dense`` module: linear layer then its activation (and the
    residual connection newer versions may configure)."""
    cfg = _read_json(folder / "config.json")
    linear = nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))
    state = load_state_dict(folder, allow_pickle=allow_pickle)
    linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items() if k.startswith("linear.")})
    if cfg.get("use_residual"):
        raise ValueError(f"{folder}: Dense with use_residual is not supported yet")
    return nn.Sequential(linear, activation_from_name(cfg.get("activation_function"))).eval()


def load_projector(dirs: list[Path], *, allow_pickle: bool) -> nn.Module | None:
    """All ``Dense`` modules chained, or None when the model has none."""
    if not dirs:
        return None
    return nn.Sequential(*[load_dense(d, allow_pickle=allow_pickle) for d in dirs]).eval()


__all__ = ["STModules", "activation_from_name", "load_projector", "read_st_modules"]
