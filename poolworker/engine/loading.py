"""Load a pooling model from a local folder: config, tokenizer, backbone, head, ST modules.

Security defaults: safetensors only unless ``allow_pickle=True``; ``trust_remote_code`` off
unless asked. Everything the poolers need is resolved here, once.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PretrainedConfig,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from .bge_m3 import BGE_M3_FAMILIES, BgeM3Heads, load_bge_m3_heads
from .conversion import (
    ModelKind,
    UnsupportedArchitectureError,
    check_supported,
    is_classifier_architecture,
    is_token_classifier,
    kind_from_architecture,
)
from .from_token import FROM_TOKEN_FAMILIES, lm_head_classifier
from .heads import (
    TRANSFORMERS_HEAD_FAMILIES,
    ClassifierHeads,
    HeadPath,
    TransformersHead,
    masked_lm_head,
    pooled_row_heads,
    transformers_heads,
)
from .overrides import (
    BGE_M3_ARCHITECTURE,
    TokenClassifierSpec,
    apply_hf_overrides,
    parse_hf_overrides,
    token_classifier_spec,
)
from .packed import FORWARD_ENV, build_packed, forced_generic, packed_support
from .pylate import PyLatePreparation, is_pylate, load_pylate
from .resolve import resolve_model_path
from .score_template import ScoreTemplate, resolve_score_template
from .st_config import STModules, load_projector, read_st_modules
from .weights import require_loadable

log = logging.getLogger(__name__)

# RoBERTa-style position ids start after the padding index, so two positions are unusable.
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert", "data2vec-text", "xmod", "longformer"}


@dataclass
class LoadedModel:
    """A model ready to run: the backbone produces hidden states, heads turn them into outputs."""

    path: Path
    config: PretrainedConfig
    architecture: str
    kind: ModelKind
    tokenizer: transformers.PreTrainedTokenizerBase
    backbone: nn.Module
    heads: ClassifierHeads | None
    mlm_head: nn.Module | None
    projector: nn.Module | None
    st: STModules
    is_decoder: bool
    max_model_len: int
    vocab_size: int
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    accepts_token_type_ids: bool
    # The packed (unpadded) backbone sharing ``backbone``'s weights, or None: the runner then uses
    # the generic transformers path. ``forward_path`` says which, and why (``poolworker models``).
    packed: nn.Module | None = None
    forward_path: str = "transformers (generic, padded batches)"
    # How outputs are made from hidden states (``poolworker models``): pooled rows through the
    # family's head, or the family's whole transformers classifier (heads.py).
    head_path: HeadPath = HeadPath.POOLED_ROWS
    head_description: str = ""
    # bge-m3's sparse and ColBERT heads (``hf_overrides`` architectures BgeM3EmbeddingModel).
    bge_m3: BgeM3Heads | None = None
    # How a cross-encoder renders a (query, document) pair into one prompt (score_template.py).
    score_template: ScoreTemplate | None = None
    # PyLate's query/document input preparation and output filtering (pylate.py).
    pylate: PyLatePreparation | None = None
    # False: loaded for everything but the forwards (tokenizer, limits, heads' shapes, the
    # fingerprint), its tensors released to the meta device; ``device``/``dtype`` still name
    # where the model runs, so every decision made from them is the one the serving copy makes.
    weights: bool = True

    @property
    def num_labels(self) -> int:
        return int(getattr(self.config, "num_labels", 0) or 0)

    @property
    def token_classifier(self) -> bool:
        return is_token_classifier(self.architecture)


def pick_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str | torch.dtype, config: PretrainedConfig, device: torch.device) -> torch.dtype:
    """float32 on CPU (exactness first); on CUDA the checkpoint's half precision if it has one."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
            if stored in (torch.float16, torch.bfloat16, "float16", "bfloat16"):
                return getattr(torch, str(stored).removeprefix("torch."))
        return torch.float32
    names = {"float32": torch.float32, "float": torch.float32, "float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(names)}, got {dtype!r}")
    return names[dtype]


def _architecture(config: PretrainedConfig) -> str:
    archs = getattr(config, "architectures", None) or []
    return archs[0] if archs else f"{type(config).__name__.removesuffix('Config')}Model"


def _is_decoder(config: PretrainedConfig) -> bool:
    model_type = getattr(config, "model_type", "")
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _max_model_len(config: PretrainedConfig, st: STModules, tokenizer, requested: int | None, pylate: bool = False) -> int:
    """The longest input: the position embeddings, the saved ``max_seq_length`` and the tokenizer's
    ``model_max_length``, or ``requested``. A PyLate checkpoint is bounded by its positions alone:
    PyLate resets ``max_seq_length`` to the role's length before every tokenization and passes
    that length to the tokenizer, so neither saved value cuts its inputs."""
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        if getattr(config, "model_type", "") in _OFFSET_POSITION_MODELS:
            positions -= 2
        limits.append(int(positions))
    if st.max_seq_length and not pylate:
        limits.append(int(st.max_seq_length))
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000 and not pylate:
        limits.append(tok_max)
    limit = min(limits) if limits else 512
    if requested is None:
        return limit
    if not isinstance(requested, int) or isinstance(requested, bool) or requested < 1:
        raise ValueError(f"max_model_len must be a positive integer, got {requested!r}")
    if positions and requested > positions:
        raise ValueError(f"max_model_len={requested} exceeds the model's {positions} position embeddings")
    return requested


def _fingerprint(path: Path, config: PretrainedConfig, dtype: torch.dtype, score_template: ScoreTemplate | None) -> str:
    """Names the exact model for result caches: config (overrides applied), dtype (fp16 results
    differ from fp32), the score template (it changes every score) and the bytes of every weight,
    tokenizer and config file. Sizes alone would let a fine-tune deployed at the same path share
    the old model's cache entries. ~0.1 s for MiniLM's 90 MB."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    h.update(str(dtype).encode())
    if score_template is not None:
        h.update(b"score_template:" + score_template.source.encode())
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".pt", ".json", ".txt", ".model"):
            with f.open("rb") as fh:
                h.update(f"{f.relative_to(path)}:".encode() + hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()[:32]


def _model_class(architecture: str, trust_remote_code: bool):
    cls = getattr(transformers, architecture, None)
    if cls is not None:
        return cls
    if trust_remote_code:
        return transformers.AutoModelForSequenceClassification
    raise ValueError(
        f"architecture {architecture} is not part of transformers {transformers.__version__}; it needs the "
        f"model's own code: pass trust_remote_code=True only if you trust that repository"
    )


# Per-family backbone classes for embedding checkpoints where AutoModel would pick a model that
# cannot run on input ids alone (T5Model also wants decoder inputs; sentence-T5 is the encoder).
_EMBED_BACKBONES = {"t5": "T5EncoderModel"}


def _load_module(cls, path: Path, *, use_safetensors: bool, trust_remote_code: bool, unused_ok: tuple[str, ...] = ()) -> nn.Module:
    """``cls`` from ``path``; a weight the checkpoint lacks is an error (transformers would fill
    it with random values and the model would answer confidently wrong), except buffers and
    modules the task never runs (``unused_ok``: name parts such as ``pooler``)."""
    kwargs = {"use_safetensors": use_safetensors}
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    model, info = cls.from_pretrained(str(path), output_loading_info=True, **kwargs)
    missing = [
        k for k in info.get("missing_keys", [])
        if "position_ids" not in k and not any(part in unused_ok for part in k.split("."))
    ]
    if missing:
        raise ValueError(
            f"{path}: the checkpoint has no weights for {', '.join(sorted(missing)[:4])}"
            f"{' and more' if len(missing) > 4 else ''}; loaded as {cls.__name__} they would be random"
        )
    return model


def _embed_class(model_type: str):
    name = _EMBED_BACKBONES.get(model_type)
    return getattr(transformers, name) if name else AutoModel


def _own_code(config: PretrainedConfig, trust_remote_code: bool) -> bool:
    """The model runs its repository's code (its own reference) rather than transformers'."""
    return trust_remote_code and bool(getattr(config, "auto_map", None))


def load_model(
    model: str,
    *,
    convert: str | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    max_model_len: int | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    hf_overrides: dict | str | None = None,
    score_template: str | Path | None = None,
    weights: bool = True,
) -> LoadedModel:
    """Resolve ``model`` offline and load everything needed to pool with it. ``hf_overrides``
    replaces config.json values first (vLLM's option; ``overrides.py`` says which keys);
    ``score_template`` is resolved here (``score_template.py``) so the fingerprint covers it.

    ``weights=False`` (a worker process whose model process runs the forwards): the same load
    and checks, then the tensors go to the meta device instead of ``device``, so the process
    keeps no copy of the weights and puts nothing on the accelerator."""
    overrides = parse_hf_overrides(hf_overrides)
    path = resolve_model_path(model)
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ValueError(f"{path}: this model needs its own code; pass trust_remote_code=True only if you trust it") from exc
        raise
    apply_hf_overrides(config, overrides)
    architecture = _architecture(config)
    kind = kind_from_architecture(architecture, convert)
    model_type = str(getattr(config, "model_type", ""))
    own_code = _own_code(config, trust_remote_code)
    from_token = token_classifier_spec(config)
    if from_token is not None:
        _check_from_token(architecture, model_type, kind, own_code)
    elif not own_code:
        check_supported(architecture, model_type, kind, token_classifier=is_token_classifier(architecture))
    use_safetensors = require_loadable(path, allow_pickle=allow_pickle)
    st = read_st_modules(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    limit = _max_model_len(config, st, tokenizer, max_model_len, pylate=is_pylate(path))
    template = resolve_score_template(score_template, config)

    heads: ClassifierHeads | None = None
    mlm_head: nn.Module | None = None
    bge_m3: BgeM3Heads | None = None
    load = {"use_safetensors": use_safetensors, "trust_remote_code": trust_remote_code}
    head_description = "hidden states → pooler (method × Dense / Matryoshka / normalize)"
    if from_token is not None:
        backbone, heads, keep = _from_token_classifier(path, config, tokenizer, from_token, load)
        head_description = heads.description
    elif kind is ModelKind.CLASSIFY:
        cls = _model_class(architecture, trust_remote_code)
        if not is_classifier_architecture(architecture):
            raise ValueError(
                f"convert='classify' needs a checkpoint with a classification head; {architecture} has none. A generative "
                f"reranker is served with hf_overrides naming the tokens its score is read from, e.g. "
                f'{{"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"], '
                f'"is_original_qwen3_reranker": true}}'
            )
        full = _load_module(cls, path, **load)
        token_cls = is_token_classifier(architecture)
        if own_code or model_type in TRANSFORMERS_HEAD_FAMILIES:
            heads = transformers_heads(token_cls)
            backbone = TransformersHead(full, per_token=token_cls, exact_lengths=model_type in TRANSFORMERS_HEAD_FAMILIES)
        else:
            heads = pooled_row_heads(full, model_type, token_cls)
            backbone = full.base_model
        head_description = heads.description
        keep: nn.Module = full
    elif kind is ModelKind.SPLADE:
        full = _load_module(AutoModelForMaskedLM, path, **load, unused_ok=("pooler",))
        mlm_head = masked_lm_head(full)
        backbone = full.base_model
        keep = full
        head_description = "masked-LM head per token → log(1 + relu) → max over tokens"
    else:
        backbone = _load_module(_embed_class(model_type), path, **load, unused_ok=("pooler",))
        keep = backbone
        if architecture == BGE_M3_ARCHITECTURE:
            if model_type not in BGE_M3_FAMILIES:
                raise UnsupportedArchitectureError(architecture, model_type, kind, sorted(BGE_M3_FAMILIES))
            bge_m3 = load_bge_m3_heads(path, tokenizer, int(config.hidden_size), allow_pickle=allow_pickle)
            keep = nn.ModuleList([backbone, bge_m3.modules()])
            head_description = ("bge-m3: dense = CLS → normalize; sparse = relu(sparse_linear) per token; "
                                "ColBERT = colbert_linear per token after BOS → normalize")

    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, config, dev)
    place = dev if weights else torch.device("meta")
    keep.to(device=place, dtype=torch_dtype).eval().requires_grad_(False)
    projector = load_projector(st.dense_dirs, allow_pickle=allow_pickle)
    if projector is not None:
        projector.to(device=place, dtype=torch_dtype).eval().requires_grad_(False)

    if isinstance(backbone, TransformersHead):
        packed, forward_path = None, "transformers (the whole classification model on each batch)"
        takes_types = backbone.takes_token_types
    else:
        packed, forward_path = _packed_backbone(config, backbone)
        takes_types = "token_type_ids" in inspect.signature(backbone.forward).parameters
    accepts_tt = takes_types and getattr(config, "type_vocab_size", 0) > 0
    vocab_size = int(backbone.get_input_embeddings().num_embeddings)
    pylate = load_pylate(path, tokenizer, vocab_size=vocab_size, max_model_len=limit, causal=_is_decoder(config),
                         has_dense=bool(st.dense_dirs))
    return LoadedModel(
        path=path,
        config=config,
        architecture=architecture,
        kind=kind,
        tokenizer=tokenizer,
        backbone=backbone,
        heads=heads,
        mlm_head=mlm_head,
        projector=projector,
        st=st,
        is_decoder=_is_decoder(config),
        max_model_len=limit,
        vocab_size=vocab_size,
        device=dev,
        dtype=torch_dtype,
        fingerprint=_fingerprint(path, config, torch_dtype, template),
        accepts_token_type_ids=accepts_tt,
        packed=packed,
        forward_path=forward_path,
        head_path=heads.path if heads is not None else HeadPath.POOLED_ROWS,
        head_description=head_description,
        bge_m3=bge_m3,
        score_template=template,
        pylate=pylate,
        weights=weights,
    )


def _check_from_token(architecture: str, model_type: str, kind: ModelKind, own_code: bool) -> None:
    """An LM-head classifier is served only for the proven decoder families, converted to a
    sequence classifier (the override's ``architectures``), and never with remote code."""
    if own_code:
        raise ValueError("classifier_from_token with trust_remote_code is not supported: the LM head of remote code is not proven")
    if kind is not ModelKind.CLASSIFY or is_token_classifier(architecture):
        raise ValueError(
            f"classifier_from_token makes a sequence classifier: set hf_overrides 'architectures' to a "
            f"*ForSequenceClassification name (got {architecture})"
        )
    if model_type not in FROM_TOKEN_FAMILIES:
        raise UnsupportedArchitectureError(architecture, model_type, kind, sorted(FROM_TOKEN_FAMILIES))


def _from_token_classifier(path: Path, config: PretrainedConfig, tokenizer, spec: TokenClassifierSpec,
                           load: dict) -> tuple[nn.Module, ClassifierHeads, nn.Module]:
    """Backbone, heads and the modules to keep for a ``*ForCausalLM`` checkpoint scored from its
    LM head's rows (``from_token.py``). The LM head itself is dropped after its rows are read."""
    causal = _load_module(AutoModelForCausalLM, path, **load)
    linear = lm_head_classifier(causal, tokenizer, spec)
    config.num_labels = spec.num_labels
    if spec.num_labels > 1:
        config.id2label = dict(enumerate(spec.tokens))
        config.label2id = {t: i for i, t in enumerate(spec.tokens)}
    heads = ClassifierHeads(linear, linear, "LAST", HeadPath.POOLED_ROWS, spec.describe())
    backbone = causal.base_model
    return backbone, heads, nn.ModuleList([backbone, linear])


def _packed_backbone(config: PretrainedConfig, backbone: nn.Module) -> tuple[nn.Module | None, str]:
    """The packed backbone when this architecture has one (sharing the loaded weights), and the
    line ``describe()`` shows for the forward path."""
    generic = "transformers (generic, padded batches)"
    if forced_generic():
        return None, f"{generic}: forced by {FORWARD_ENV}=transformers"
    if not type(backbone).__module__.startswith("transformers."):
        return None, f"{generic}: the model's own code (trust_remote_code)"
    reason = packed_support(config)
    if reason is None:
        try:
            packed = build_packed(config, backbone)
        except (KeyError, ValueError) as exc:  # a weight layout the packed model does not know
            reason = f"packed build failed ({type(exc).__name__}: {exc})"
            log.warning("%s: %s; using the transformers forward", type(backbone).__name__, reason)
    if reason is not None:
        return None, f"{generic}: {reason}"
    kind = "decoder, causal" if getattr(packed, "causal", False) else "encoder"
    return packed, f"packed ({config.model_type} {kind}: unpadded tokens, attention per length bucket)"
