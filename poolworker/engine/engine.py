"""``Engine``: every pooling task on one model, offline, mirroring vLLM's ``LLM`` pooling methods.

The engine knows nothing of Kafka or Redis. Each public method checks its inputs, tokenizes,
runs the backbone once over all prompts (``Runner``), then pools (``Pooler``).

Those two halves are also offered apart, for a caller that runs them on different threads (the
streaming worker tokenizes on its receive thread and computes on its model thread):
``check_options`` / ``truncation`` / ``tokenize_each`` / ``tokenize_pairs_each`` validate and
tokenize, reporting each prompt's error as a typed value; ``compute`` / ``cross_encode_ids`` /
``score_ids`` run on token ids that came from them and validate nothing again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from poolworker import kernels

from .conversion import ModelKind
from .errors import (
    EngineError,
    InputTooLong,
    InvalidInput,
    InvalidInputType,
    UnsupportedTask,
)
from .loading import LoadedModel, load_model
from .model_spec import merge_spec
from .outputs import (
    ClassificationOutput,
    EmbeddingOutput,
    MultiPoolingOutput,
    PoolingOutput,
    RequestOutput,
    RerankResult,
    ScoringOutput,
)
from .overrides import parse_hf_overrides
from .pooler_config import POOLING_TASKS, PoolerConfig
from .poolers import HeadParams, Pooler
from .prompts import (
    Prompt,
    PromptTokenizer,
    Truncation,
    normalize_prompts,
    raise_first,
    resolve_truncation,
)
from .pylate import DEFAULT_ROLE, ROLES, Role
from .resolve import DEFAULT_MODEL
from .runner import Packed, Runner
from .score_template import ScoreTemplate

_KIND_REASONS = {
    ModelKind.EMBED: "an embedding model (its hidden states are pooled into vectors)",
    ModelKind.CLASSIFY: "a classification model (it has a classifier head)",
    ModelKind.SPLADE: "a masked-LM model served as a SPLADE sparse embedder",
}
# A request's ``input_type`` (Cohere's names) → the role of its texts on a PyLate checkpoint.
INPUT_TYPE_ROLES: dict[str, Role] = {"search_query": "query", "search_document": "document"}


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class Engine:
    """A pooling model loaded from a local folder, a bundled name or the local HF cache.

    Args mirror vLLM's ``LLM``: ``task`` picks the default pooling task, ``convert`` overrides
    the architecture-derived conversion (``embed``/``classify``), ``pooler_config`` overrides
    pooling, ``hf_overrides`` replaces config.json values (vLLM's option, e.g. to serve the
    original Qwen3-Reranker from its LM head: ``overrides.py``). ``score_template`` (Jinja text or
    a file) turns a (query, document) pair into the one prompt a cross-encoder reads; models with
    ``is_original_qwen3_reranker`` default to the Qwen3-Reranker prompt. ``model`` may also be
    a model spec file (``model_spec.py``) carrying those two options, which is how the worker's
    ``--model NAME=PATH`` passes them. Weights load from
    safetensors only unless ``allow_pickle=True``; remote code runs only with
    ``trust_remote_code=True``. ``weights=False`` loads everything but the weights (a worker
    process tokenizes and checks options while its model process runs the forwards); such an
    engine refuses to run a forward pass (``WeightsNotLoaded``).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        task: str | None = None,
        convert: str | None = None,
        pooler_config: PoolerConfig | dict | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
        max_batch_tokens: int | None = None,
        hf_overrides: dict | str | None = None,
        score_template: str | None = None,
        weights: bool = True,
    ) -> None:
        if isinstance(pooler_config, dict):
            pooler_config = PoolerConfig(**pooler_config)
        self.pooler_config = pooler_config or PoolerConfig()
        self.model_name = str(model)
        path, hf_overrides, score_template = merge_spec(str(model), hf_overrides, score_template)
        self.hf_overrides = parse_hf_overrides(hf_overrides)
        self.model: LoadedModel = load_model(
            path,
            convert=convert,
            device=device,
            dtype=dtype,
            max_model_len=max_model_len,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
            hf_overrides=self.hf_overrides,
            score_template=score_template,
            weights=weights,
        )
        self.score_template: ScoreTemplate | None = self.model.score_template
        self.pooler = Pooler(self.model, self.pooler_config)
        self.runner = Runner(self.model, max_batch_tokens=max_batch_tokens)
        self.tokenizer = PromptTokenizer(self.model.tokenizer, vocab_size=self.model.vocab_size, lowercase=self.model.st.do_lower_case)
        self.supported_tasks: tuple[str, ...] = self._supported_tasks()
        self.default_task = self._default_task(task or self.pooler_config.task)
        self._check_pooler_config()

    # -- model facts --------------------------------------------------------------------------
    def _supported_tasks(self) -> tuple[str, ...]:
        kind = self.model.kind
        if self.model.pylate is not None:  # PyLate defines token vectors only (as vLLM's ColBERT models)
            return ("token_embed",)
        if kind is ModelKind.EMBED:
            return ("embed", "token_embed", "token_classify") if self.model.bge_m3 is not None else ("embed", "token_embed")
        if kind is ModelKind.SPLADE:
            return ("embed",)
        heads = self.model.heads
        if self.model.token_classifier:
            return ("token_classify",)
        return ("classify", "token_classify") if heads.token is not None else ("classify",)

    def _default_task(self, requested: str | None) -> str:
        if requested is not None:
            self._require(requested)
            return requested
        st = self.model.st
        if self.model.kind is ModelKind.EMBED and st.present and not st.has_pooling:
            return "token_embed"  # Sentence-Transformers modules without Pooling: multi-vector
        return self.supported_tasks[0]

    def _check_pooler_config(self) -> None:
        cfg = self.pooler_config
        if cfg.dimensions is not None:
            self._check_dimensions(cfg.dimensions)
        if cfg.pooling_type == "STEP" and "token_classify" not in self.supported_tasks:
            raise ValueError("pooling_type STEP needs a token classification head (token_classify)")
        if self.model.bge_m3 is not None and (cfg.pooling_type == "STEP" or cfg.returned_token_ids is not None):
            raise ValueError("bge-m3's token_classify is its sparse head (one weight per token): STEP pooling and "
                             "returned_token_ids do not apply")
        if cfg.returned_token_ids is not None and "token_classify" in self.supported_tasks:
            labels = self.model.num_labels
            bad = [t for t in cfg.returned_token_ids if not 0 <= t < labels]
            if bad:
                raise ValueError(f"returned_token_ids {bad} are outside the classifier's {labels} outputs")
        if cfg.seq_pooling_type and self.model.kind is ModelKind.SPLADE:
            raise ValueError("SPLADE models pool with max over tokens; pooling_type cannot change that")

    @property
    def score_mode(self) -> str | None:
        """How ``score`` works for this model: cross-encoder, bi-encoder, late-interaction."""
        if self.model.kind is ModelKind.CLASSIFY:
            ok = "classify" in self.supported_tasks and self.model.num_labels == 1
            return "cross-encoder" if ok else None
        if self.model.kind is ModelKind.EMBED:
            return "late-interaction" if self.default_task == "token_embed" else "bi-encoder"
        return None

    @property
    def max_model_len(self) -> int:
        return self.model.max_model_len

    def describe(self) -> dict:
        """What ``poolworker models`` prints."""
        m = self.model
        return {
            "model": self.model_name,
            "path": str(m.path),
            "architecture": m.architecture,
            "model_type": getattr(m.config, "model_type", None),
            "kind": m.kind.value,
            "supported_tasks": list(self.supported_tasks),
            "default_task": self.default_task,
            "score_mode": self.score_mode,
            "max_model_len": m.max_model_len,
            "num_labels": m.num_labels if m.kind is ModelKind.CLASSIFY else None,
            "pooler_config": self.pooler.describe(),
            "forward_path": m.forward_path,
            "head_path": m.head_path.value,
            "head": m.head_description,
            "hf_overrides": self.hf_overrides or None,
            "score_template": self.score_template.name if self.score_template is not None else None,
            "pylate": m.pylate.describe() if m.pylate is not None else None,
            "device": str(m.device),
            "dtype": str(m.dtype).removeprefix("torch."),
            "fingerprint": m.fingerprint,
        }

    def _require(self, task: object) -> None:
        if task not in POOLING_TASKS:
            raise InvalidInput(f"pooling_task must be one of {POOLING_TASKS}, got {task!r}", "pooling_task")
        if task not in self.supported_tasks:
            raise UnsupportedTask(
                f"{self.model_name} ({self.model.architecture}) cannot do '{task}': it is "
                f"{_KIND_REASONS[self.model.kind]} and supports {list(self.supported_tasks)}",
                "pooling_task",
            )

    def _check_dimensions(self, dimensions: object) -> int | None:
        if dimensions is None:
            return None
        if not _is_int(dimensions):
            raise InvalidInputType(f"dimensions must be an int, got {type(dimensions).__name__}", "dimensions")
        if self.model.kind is ModelKind.SPLADE:
            raise InvalidInput("dimensions: SPLADE vectors are indexed by vocabulary and cannot be shortened", "dimensions")
        size = self.pooler.embedding_size
        if not 1 <= dimensions <= size:
            raise InvalidInput(f"dimensions must be between 1 and the embedding size {size}, got {dimensions}", "dimensions")
        allowed = getattr(self.model.config, "matryoshka_dimensions", None)
        if allowed and dimensions not in allowed:
            raise InvalidInput(f"dimensions={dimensions} is not one of the model's Matryoshka dimensions {allowed}", "dimensions")
        return dimensions

    def resolve_role(self, input_type: object) -> Role | None:
        """The role a request's ``input_type`` gives its texts: ``search_query`` / ``search_document``
        on a PyLate checkpoint (None there: PyLate's default, a query). Other models have no
        roles, so an ``input_type`` on their token/pooling requests is an error."""
        if self.model.pylate is None:
            if input_type is not None:
                raise InvalidInput(f"input_type applies to models whose texts are queries or documents (PyLate "
                                   f"ColBERT checkpoints); {self.model_name} has no such roles", "input_type")
            return None
        if input_type is None:
            return DEFAULT_ROLE
        if input_type not in INPUT_TYPE_ROLES:
            raise InvalidInput(f"Unsupported input_type {input_type!r}. Supported values: {', '.join(INPUT_TYPE_ROLES)}",
                               "input_type")
        return INPUT_TYPE_ROLES[input_type]  # type: ignore[index]

    @staticmethod
    def _check_flag(value: object, name: str) -> None:
        if value is not None and not isinstance(value, bool):
            raise InvalidInputType(f"{name} must be a bool or None, got {type(value).__name__}", name)

    # -- tokenization ---------------------------------------------------------------------------
    def truncation(self, truncate_prompt_tokens: object = None, truncation_side: object = None) -> Truncation:
        """The request's truncation options, checked against this model (typed error if bad)."""
        return resolve_truncation(truncate_prompt_tokens, truncation_side, self.max_model_len, self.tokenizer.default_side)

    def _length_limit(self, task: str) -> int | None:
        cfg = self.pooler_config
        if task == "embed" and cfg.enable_chunked_processing:
            return cfg.max_embed_len  # None: any length, in chunks
        return self.max_model_len

    def _checked_length(self, outcome: list[int] | EngineError, task: str, where: str) -> list[int] | EngineError:
        """``outcome`` itself, or an ``InputTooLong`` when it has more tokens than ``task`` takes."""
        limit = self._length_limit(task)
        if isinstance(outcome, EngineError) or limit is None or len(outcome) <= limit:
            return outcome
        what = "max_embed_len" if limit != self.max_model_len else "max_model_len"
        return InputTooLong(
            f"{where} has {len(outcome)} tokens, more than {what}={limit}; pass truncate_prompt_tokens "
            f"(-1 = model maximum) to truncate, or PoolerConfig(enable_chunked_processing=True) for embed",
            where,
        )

    def tokenize_each(self, prompts: Sequence[Prompt], labels: Sequence[str], *, pooling_task: str,
                      truncation: Truncation, role: Role | None = None) -> list[list[int] | EngineError]:
        """Token ids of already well-formed prompts (text, or token id sequences), one outcome
        each: the ids ``compute`` takes, or that prompt's typed error named by its label. Texts
        are tokenized in one call, however many requests they came from. On a PyLate checkpoint
        the texts are prepared for ``role`` (a query when None) as PyLate prepares them."""
        if self.model.pylate is not None:
            return self._tokenize_pylate(prompts, labels, truncation, role or DEFAULT_ROLE)
        if role is not None:
            raise InvalidInput(f"{self.model_name} has no query/document roles (not a PyLate checkpoint)", "input_type")
        encoded = self.tokenizer.encode_each(prompts, truncation, labels)
        return [self._checked_length(x, pooling_task, where) for x, where in zip(encoded, labels)]

    def _tokenize_pylate(self, prompts: Sequence[Prompt], labels: Sequence[str], truncation: Truncation,
                         role: Role) -> list[list[int] | EngineError]:
        """PyLate's ``tokenize(texts, is_query=...)``: stripped text cut to the role's length
        (minus the marker), the marker after the first token, queries padded with expansion
        tokens. PyLate has no truncation or padding options and always adds special tokens, so
        requests asking otherwise are refused rather than answered with other vectors."""
        prep = self.model.pylate
        assert prep is not None
        if truncation.max_tokens not in (None, self.max_model_len) or truncation.refuse_above is not None:
            raise InvalidInput(f"truncate_prompt_tokens: a PyLate checkpoint cuts queries at query_length={prep.query_length} "
                               f"and documents at document_length={prep.document_length} tokens; only -1 is accepted",
                               "truncate_prompt_tokens")
        if truncation.side != self.tokenizer.default_side:
            raise InvalidInput("truncation_side: a PyLate checkpoint truncates on its tokenizer's side", "truncation_side")
        if truncation.pad_to is not None:
            raise InvalidInput("padding: a PyLate checkpoint pads queries with its expansion tokens only", "padding")
        if not truncation.special_tokens:
            raise InvalidInput("add_special_tokens: a PyLate checkpoint always adds the model's special tokens", "add_special_tokens")
        cut = Truncation(prep.text_tokens(role), self.tokenizer.default_side)
        texts = [p if not isinstance(p, str) else prep.clean(p) for p in prompts]
        encoded = self.tokenizer.encode_each(texts, cut, labels)
        out: list[list[int] | EngineError] = []
        for prompt, x, where in zip(prompts, encoded, labels):
            if not isinstance(prompt, str):
                x = InvalidInput(f"{where}: a PyLate checkpoint takes text (it inserts its {role} marker and pads queries); "
                                 "token ids are not accepted", where)
            out.append(x if isinstance(x, EngineError) else self._checked_length(prep.prepare(x, role), "token_embed", where))
        return out

    def tokenize_pairs_each(self, firsts: Sequence[str], seconds: Sequence[str], labels: Sequence[str], *,
                            truncation: Truncation) -> list[tuple[list[int], list[int]] | EngineError]:
        """Cross-encoder input: (token ids, token type ids) of each text pair, or its typed error.
        With a score template each pair is rendered into one prompt first."""
        if self.score_template is not None:
            return self._tokenize_templated(firsts, seconds, labels, truncation)
        ids, types = self.tokenizer.encode_pairs(list(firsts), list(seconds), truncation)
        out: list[tuple[list[int], list[int]] | EngineError] = []
        for x, t, where in zip(ids, types, labels):
            checked = self._checked_length(x, "classify", where)
            out.append(checked if isinstance(checked, EngineError) else (x, t))
        return out

    def _tokenize_templated(self, firsts: Sequence[str], seconds: Sequence[str], labels: Sequence[str],
                            truncation: Truncation) -> list[tuple[list[int], list[int]] | EngineError]:
        """Each pair rendered by the score template, then tokenized as one prompt. A rendered
        prompt is never truncated: cutting it would drop the template's end (the turn the score
        is read after) or its start, and answer a different question; it is an error instead."""
        template: ScoreTemplate = self.score_template  # type: ignore[assignment]
        if truncation.pad_to is not None:  # pads after the template's end: the LAST row would be a pad
            raise InvalidInput("padding='max_length' does not apply to prompts made by a score template", "padding")
        texts = [template.render(q, d) for q, d in zip(firsts, seconds)]
        whole = dataclasses.replace(truncation, max_tokens=None, refuse_above=None)
        encoded = self.tokenize_each(texts, labels, pooling_task="classify", truncation=whole)
        out: list[tuple[list[int], list[int]] | EngineError] = []
        for x, where in zip(encoded, labels):
            if not isinstance(x, EngineError) and truncation.max_tokens is not None and len(x) > truncation.max_tokens:
                x = InputTooLong(
                    f"{where} has {len(x)} tokens after the score template, more than truncate_prompt_tokens="
                    f"{truncation.max_tokens}; templated prompts are not truncated (it would cut the template)", where)
            out.append(x if isinstance(x, EngineError) else (x, [0] * len(x)))
        return out

    def _tokenize(self, prompts: object, task: str, trunc: Truncation, field: str = "prompts", role: Role | None = None) -> list[list[int]]:
        listed = normalize_prompts(prompts, field)
        ids = self.tokenize_each(listed, [f"{field}[{i}]" for i in range(len(listed))], pooling_task=task, truncation=trunc,
                                 role=role)
        raise_first(ids)
        return ids  # type: ignore[return-value]

    def tokenize(
        self,
        prompts: str | Sequence[Prompt],
        *,
        pooling_task: str,
        truncate_prompt_tokens: int | None = None,
        truncation_side: str | None = None,
        role: Role | None = None,
    ) -> list[list[int]]:
        """Token ids exactly as ``encode`` would feed them, checked and truncated. Callers that
        tokenize ahead of the forward pass (the streaming worker) pass these back as prompts."""
        self._require(pooling_task)
        return self._tokenize(prompts, pooling_task, self.truncation(truncate_prompt_tokens, truncation_side), role=role)

    def check_options(self, pooling_task: str, *, dimensions: object = None, use_activation: object = None) -> HeadParams:
        """Validate per-request head options for ``pooling_task`` before any work is done."""
        self._require(pooling_task)
        self._check_flag(use_activation, "use_activation")
        dims = self._check_dimensions(dimensions)
        if dims is not None and pooling_task not in ("embed", "token_embed"):
            raise InvalidInput(f"dimensions applies to embed and token_embed, not {pooling_task}", "dimensions")
        bge_m3 = self.model.bge_m3
        if dims is not None and bge_m3 is not None and pooling_task == "token_embed" and dims > bge_m3.colbert_dim:
            raise InvalidInput(f"dimensions must be at most the ColBERT size {bge_m3.colbert_dim}, got {dims}", "dimensions")
        return HeadParams(dims if dims is not None else self.pooler_config.dimensions, use_activation)

    # -- the core: ids → per-prompt tensors -------------------------------------------------------
    @torch.inference_mode()
    def compute(self, task: str, ids: list[list[int]], params: HeadParams, use_tqdm: bool = False,
                roles: Sequence[Role | None] | None = None) -> list[torch.Tensor]:
        """Pooled output per prompt for token ids from ``tokenize``/``tokenize_each`` and head
        options from ``check_options``: ``[dim]`` for sequence tasks, ``[tokens, dim]`` for
        token tasks. Nothing is validated again here. ``roles`` (per prompt; PyLate checkpoints)
        are the roles the ids were tokenized for: they decide which tokens are attended to and
        which vectors a document keeps."""
        if not ids:
            return []
        if self.model.pylate is not None and task == "token_embed":
            return self._pylate_outputs(ids, params, [r or DEFAULT_ROLE for r in roles] if roles is not None else [DEFAULT_ROLE] * len(ids),
                                        use_tqdm)
        if task == "embed":
            return list(self.pooler.embed_head(self._pool_chunked(ids, use_tqdm), params))
        if task == "classify":
            return list(self.pooler.classify_head(self.runner.pool(ids, self.pooler.pool_sequences, use_tqdm=use_tqdm), params))
        packed = self.runner.forward(ids, use_tqdm=use_tqdm)
        return self._token_outputs(task, packed, params)

    def _pylate_outputs(self, ids: list[list[int]], params: HeadParams, roles: list[Role], use_tqdm: bool) -> list[torch.Tensor]:
        """PyLate's ``encode`` on prepared ids: one forward (non-attended expansion tokens as
        keys left out), every token's vector, and a document's skiplist vectors dropped."""
        prep = self.model.pylate
        assert prep is not None
        attended = [prep.attended(x, r) for x, r in zip(ids, roles)]
        packed = self.runner.forward(ids, use_tqdm=use_tqdm, attended=attended if any(a is not None for a in attended) else None)
        outs = self._token_outputs("token_embed", packed, params)
        token_ids = kernels.split_segments(packed.input_ids, packed.cu_seqlens)
        kept = []
        for out, tokens, role in zip(outs, token_ids, roles):
            keep = prep.keep(tokens, role)
            kept.append(out if keep is None else out[keep])
        return kept

    def _token_outputs(self, task: str, packed: Packed, params: HeadParams) -> list[torch.Tensor]:
        rows = self.pooler.pool_tokens(packed)
        token_ids = kernels.split_segments(packed.input_ids, packed.cu_seqlens)
        if task == "token_embed":
            return [self.pooler.token_embed_head(r, params, t) for r, t in zip(rows, token_ids)]
        return [self.pooler.token_classify_head(r, t, params) for r, t in zip(rows, token_ids)]

    def check_multi(self, pooling_tasks: object, *, dimensions: object = None, use_activation: object = None) -> tuple[tuple[str, ...], HeadParams]:
        """Validate a request for several tasks at once (``compute_many``): distinct supported
        tasks; ``dimensions`` applies to the embedding tasks among them."""
        if not isinstance(pooling_tasks, (list, tuple)) or not pooling_tasks:
            raise InvalidInputType("pooling_tasks must be a non-empty list of task names", "pooling_tasks")
        if self.model.pylate is not None:
            raise UnsupportedTask(f"{self.model_name} is a PyLate checkpoint: it answers token_embed alone, with a "
                                  "role (input_type), not pooling_tasks", "pooling_tasks")
        if len(set(pooling_tasks)) != len(pooling_tasks):
            raise InvalidInput(f"pooling_tasks names a task twice: {list(pooling_tasks)}", "pooling_tasks")
        embed_tasks = [t for t in pooling_tasks if t in ("embed", "token_embed")]
        for task in pooling_tasks:
            self.check_options(task, dimensions=dimensions if task in embed_tasks else None, use_activation=use_activation)
        if dimensions is not None and not embed_tasks:
            raise InvalidInput("dimensions applies to embed and token_embed, and neither is asked for", "dimensions")
        return tuple(pooling_tasks), HeadParams(dimensions if dimensions is not None else self.pooler_config.dimensions, use_activation)  # type: ignore[arg-type]

    @torch.inference_mode()
    def compute_many(self, tasks: Sequence[str], ids: list[list[int]], params: HeadParams,
                     use_tqdm: bool = False) -> list[MultiPoolingOutput]:
        """Several tasks' outputs per prompt from **one** forward pass: the hidden states are
        computed once and every head runs on them (bge-m3's dense + sparse + ColBERT). Inputs are
        at most ``max_model_len`` tokens (no chunked processing here)."""
        if not ids:
            return []
        longest = max(len(x) for x in ids)
        if longest > self.max_model_len:  # chunked embed would pool these differently from one pass
            raise InputTooLong(f"compute_many takes at most max_model_len={self.max_model_len} tokens per input, got {longest}")
        packed = self.runner.forward(ids, use_tqdm=use_tqdm)
        data: list[dict[str, torch.Tensor]] = [{} for _ in ids]
        for task in tasks:
            if task in ("embed", "classify"):
                pooled = self.pooler.pool_sequences(packed)
                head = self.pooler.embed_head if task == "embed" else self.pooler.classify_head
                values = list(head(pooled, params))
            else:
                values = self._token_outputs(task, packed, params)
            for out, value in zip(data, values):
                out[task] = value
        lexical: list[dict[int, float] | None] = [None] * len(ids)
        bge_m3 = self.model.bge_m3
        if bge_m3 is not None and "token_classify" in tasks:
            rows = self.pooler.pool_tokens(packed)
            token_ids = kernels.split_segments(packed.input_ids, packed.cu_seqlens)
            lexical = [bge_m3.lexical_weights(r.to(self.model.dtype), t) for r, t in zip(rows, token_ids)]
        return [MultiPoolingOutput(d, w) for d, w in zip(data, lexical)]

    def _pool_chunked(self, ids: list[list[int]], use_tqdm: bool) -> torch.Tensor:
        """Sequence pooling, splitting inputs longer than max_model_len into chunks whose pooled
        rows are averaged weighted by token count (chunked processing)."""
        limit = self.max_model_len
        pieces: list[list[int]] = []
        owner: list[int] = []
        for i, x in enumerate(ids):
            for start in range(0, len(x), limit):
                pieces.append(x[start : start + limit])
                owner.append(i)
        pooled = self.runner.pool(pieces, self.pooler.pool_sequences, use_tqdm=use_tqdm)
        if len(pieces) == len(ids):
            return pooled
        weights = torch.tensor([len(p) for p in pieces], dtype=torch.float32, device=pooled.device)
        index = torch.tensor(owner, device=pooled.device)
        sums = torch.zeros(len(ids), pooled.shape[1], dtype=torch.float32, device=pooled.device)
        sums.index_add_(0, index, pooled.float() * weights[:, None])
        totals = torch.zeros(len(ids), dtype=torch.float32, device=pooled.device).index_add_(0, index, weights)
        return sums / totals[:, None]

    # -- public API -------------------------------------------------------------------------------
    def encode(
        self,
        prompts: str | Sequence[Prompt],
        *,
        pooling_task: str | None = None,
        truncate_prompt_tokens: int | None = None,
        truncation_side: str | None = None,
        dimensions: int | None = None,
        use_activation: bool | None = None,
        use_tqdm: bool = True,
        role: Role | None = None,
    ) -> list[RequestOutput[PoolingOutput]]:
        """Raw pooled tensors for any supported task (vLLM's ``LLM.encode``): ``[dim]`` for
        sequence tasks, ``[num_tokens, dim]`` for token tasks (every prompt token). ``role``
        (``"query"``/``"document"``, PyLate checkpoints only; a query when None, as PyLate's
        ``encode(is_query=True)``) says how the texts are prepared and filtered."""
        task = pooling_task or self.default_task
        params = self.check_options(task, dimensions=dimensions, use_activation=use_activation)
        if role is not None and role not in ROLES:
            raise InvalidInput(f"role must be 'query' or 'document', got {role!r}", "role")
        ids = self.tokenize(prompts, pooling_task=task, truncate_prompt_tokens=truncate_prompt_tokens, truncation_side=truncation_side,
                            role=role)
        data = self.compute(task, ids, params, use_tqdm, roles=[role] * len(ids) if role is not None else None)
        return [RequestOutput(str(i), PoolingOutput(d.cpu()), x) for i, (d, x) in enumerate(zip(data, ids))]

    def encode_multi(
        self,
        prompts: str | Sequence[Prompt],
        *,
        pooling_tasks: Sequence[str],
        truncate_prompt_tokens: int | None = None,
        truncation_side: str | None = None,
        dimensions: int | None = None,
        use_activation: bool | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput[MultiPoolingOutput]]:
        """Several tasks per prompt from one forward pass (e.g. bge-m3's ``["embed",
        "token_embed", "token_classify"]``: dense, ColBERT and sparse). Each ``data[task]`` equals
        what ``encode`` gives for that task alone."""
        tasks, params = self.check_multi(pooling_tasks, dimensions=dimensions, use_activation=use_activation)
        trunc = self.truncation(truncate_prompt_tokens, truncation_side)
        ids = self._tokenize(prompts, "token_embed", trunc)  # any task but chunked embed: at most max_model_len
        outs = self.compute_many(tasks, ids, params, use_tqdm)
        return [RequestOutput(str(i), o, x) for i, (o, x) in enumerate(zip(outs, ids))]

    def embed(
        self,
        prompts: str | Sequence[Prompt],
        *,
        dimensions: int | None = None,
        truncate_prompt_tokens: int | None = None,
        truncation_side: str | None = None,
        use_activation: bool | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput[EmbeddingOutput]]:
        """One vector per prompt."""
        out = self.encode(prompts, pooling_task="embed", dimensions=dimensions, truncate_prompt_tokens=truncate_prompt_tokens,
                          truncation_side=truncation_side, use_activation=use_activation, use_tqdm=use_tqdm)
        return [RequestOutput(o.request_id, EmbeddingOutput(o.outputs.data.tolist()), o.prompt_token_ids) for o in out]

    def classify(
        self,
        prompts: str | Sequence[Prompt],
        *,
        truncate_prompt_tokens: int | None = None,
        truncation_side: str | None = None,
        use_activation: bool | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput[ClassificationOutput]]:
        """Class probabilities per prompt, with the label name of the most likely class."""
        out = self.encode(prompts, pooling_task="classify", truncate_prompt_tokens=truncate_prompt_tokens,
                          truncation_side=truncation_side, use_activation=use_activation, use_tqdm=use_tqdm)
        id2label = getattr(self.model.config, "id2label", None) or {}
        results = []
        for o in out:
            probs = o.outputs.data.tolist()
            best = max(range(len(probs)), key=probs.__getitem__)
            results.append(RequestOutput(o.request_id, ClassificationOutput(probs, id2label.get(best, str(best))), o.prompt_token_ids))
        return results

    def reward(
        self,
        prompts: str | Sequence[Prompt],
        *,
        truncate_prompt_tokens: int | None = None,
        use_activation: bool | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput[PoolingOutput]]:
        """Token-wise rewards (``token_classify``), as vLLM's ``LLM.reward``."""
        return self.encode(prompts, pooling_task="token_classify", truncate_prompt_tokens=truncate_prompt_tokens,
                           use_activation=use_activation, use_tqdm=use_tqdm)

    def score(
        self,
        text_1: str | Sequence[Prompt],
        text_2: str | Sequence[Prompt],
        *,
        truncate_prompt_tokens: int | None = None,
        use_activation: bool | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput[ScoringOutput]]:
        """Similarity of pairs: 1-vs-1, 1-vs-N (one ``text_1``) or N-vs-N (zipped)."""
        self._check_flag(use_activation, "use_activation")
        mode = self.check_score()
        firsts, seconds = _pair_up(normalize_prompts(text_1, "text_1"), normalize_prompts(text_2, "text_2"))
        trunc = self.truncation(truncate_prompt_tokens, None)
        if mode == "cross-encoder":
            if not all(isinstance(p, str) for p in firsts + seconds):
                raise InvalidInputType("cross-encoder scoring takes text for text_1 and text_2, not token ids", "text_1")
            pairs = self.tokenize_pairs_each(firsts, seconds, [f"text_1/text_2 pair[{n}]" for n in range(len(firsts))],  # type: ignore[arg-type]
                                             truncation=trunc)
            raise_first(pairs)
            ids = [x for x, _ in pairs]  # type: ignore[misc]
            scores = self.cross_encode_ids(ids, [t for _, t in pairs], HeadParams(None, use_activation), use_tqdm)  # type: ignore[misc]
            return [RequestOutput(str(n), ScoringOutput(v), x) for n, (v, x) in enumerate(zip(scores, ids))]
        # Each distinct (role, prompt) is encoded once; roles exist on PyLate checkpoints only
        # (text_1 is the query side, text_2 the documents).
        first_role, second_role = self.score_roles
        uniq: dict[tuple[Role | None, str | tuple[int, ...]], int] = {}
        for role, side in ((first_role, firsts), (second_role, seconds)):
            for p in side:
                uniq.setdefault((role, p if isinstance(p, str) else tuple(p)), len(uniq))
        ids: list[list[int]] = [[] for _ in uniq]
        for role in dict.fromkeys((first_role, second_role)):
            members = [(i, k) for (r, k), i in uniq.items() if r == role]
            encoded = self._tokenize([k if isinstance(k, str) else list(k) for _, k in members], self.score_task, trunc, "text",  # type: ignore[arg-type]
                                     role=role)
            for (i, _), x in zip(members, encoded):
                ids[i] = x
        roles = [r for r, _ in uniq] if first_role is not None else None
        pairs = [(uniq[(first_role, a if isinstance(a, str) else tuple(a))], uniq[(second_role, b if isinstance(b, str) else tuple(b))])
                 for a, b in zip(firsts, seconds)]
        values = self.score_ids(ids, pairs, use_tqdm, roles=roles)
        return [RequestOutput(str(n), ScoringOutput(v), ids[ia] + ids[ib]) for n, ((ia, ib), v) in enumerate(zip(pairs, values))]

    def check_score(self) -> str:
        """The model's score mode, or ``UnsupportedTask`` when it cannot score."""
        mode = self.score_mode
        if mode is None:
            raise UnsupportedTask(
                f"{self.model_name} cannot score: scoring needs a cross-encoder (classifier with num_labels=1, "
                f"this one has {self.model.num_labels}) or an embedding model; supported tasks: {list(self.supported_tasks)}"
            )
        return mode

    @property
    def score_roles(self) -> tuple[Role | None, Role | None]:
        """The roles of a score pair's two sides: on a PyLate checkpoint the first text is a
        query and the second a document (prepared and filtered as such); other models have none."""
        return ROLES if self.model.pylate is not None else (None, None)  # type: ignore[return-value]

    @property
    def score_task(self) -> str | None:
        """The pooling task each side of a pair goes through (None for a cross-encoder, which
        reads the pair as one sequence)."""
        return {"late-interaction": "token_embed", "bi-encoder": "embed"}.get(self.score_mode or "")

    def score_ids(self, ids: list[list[int]], pairs: Sequence[tuple[int, int]], use_tqdm: bool = False,
                  roles: Sequence[Role | None] | None = None) -> list[float]:
        """Bi-encoder (cosine) or late-interaction (MaxSim) scores of ``pairs`` of indices into
        ``ids``, which come from ``tokenize_each`` with ``pooling_task=score_task`` (and, on a
        PyLate checkpoint, the role in ``roles``: queries first in each pair, documents second);
        each distinct sequence is encoded once."""
        vectors = self.compute(self.score_task, ids, HeadParams(None, None), use_tqdm, roles=roles)  # type: ignore[arg-type]
        if self.score_mode == "late-interaction":
            return self._late_interaction(vectors, list(pairs))
        return self._cosines(vectors, list(pairs))

    @staticmethod
    def _cosines(vectors: list[torch.Tensor], pairs: list[tuple[int, int]]) -> list[float]:
        a = torch.stack([vectors[i] for i, _ in pairs])
        b = torch.stack([vectors[j] for _, j in pairs])
        return F.cosine_similarity(a, b).tolist()

    @staticmethod
    def _late_interaction(vectors: list[torch.Tensor], pairs: list[tuple[int, int]]) -> list[float]:
        """MaxSim per pair, one ``maxsim_many`` call per distinct query (1-vs-N in one launch)."""
        by_query: dict[int, list[int]] = {}
        for n, (i, _) in enumerate(pairs):
            by_query.setdefault(i, []).append(n)
        values = [0.0] * len(pairs)
        for i, members in by_query.items():
            scores = kernels.maxsim_many(vectors[i], [vectors[pairs[n][1]] for n in members]).tolist()
            for n, score in zip(members, scores):
                values[n] = score
        return values

    @torch.inference_mode()
    def cross_encode_ids(self, ids: list[list[int]], types: list[list[int]], params: HeadParams, use_tqdm: bool = False) -> list[float]:
        """Cross-encoder scores of pairs tokenized by ``tokenize_pairs_each``."""
        pooled = self.runner.pool(ids, self.pooler.pool_sequences, token_type_ids=types, use_tqdm=use_tqdm)
        return self.pooler.classify_head(pooled, params, for_score=True)[:, 0].tolist()

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        return_documents: bool = True,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
    ) -> list[RerankResult]:
        """Documents sorted by relevance to ``query`` (best first), at most ``top_n``."""
        if not isinstance(query, str):
            raise InvalidInputType(f"query must be a str, got {type(query).__name__}", "query")
        if isinstance(documents, str) or not isinstance(documents, (list, tuple)):
            raise InvalidInputType(f"documents must be a list of str, got {type(documents).__name__}", "documents")
        if not documents:
            raise InvalidInput("documents must not be empty", "documents")
        bad = next((i for i, d in enumerate(documents) if not isinstance(d, str)), None)
        if bad is not None:
            raise InvalidInputType(f"documents[{bad}] must be a str, got {type(documents[bad]).__name__}", f"documents[{bad}]")
        if top_n is not None:
            if not _is_int(top_n):
                raise InvalidInputType(f"top_n must be an int, got {type(top_n).__name__}", "top_n")
            if not 1 <= top_n <= len(documents):
                raise InvalidInput(f"top_n must be between 1 and the number of documents ({len(documents)}), got {top_n}", "top_n")
        self._check_flag(return_documents, "return_documents")
        scores = self.score(query, list(documents), truncate_prompt_tokens=truncate_prompt_tokens, use_tqdm=use_tqdm)
        order = sorted(range(len(documents)), key=lambda i: -scores[i].outputs.score)
        order = order[: top_n or len(order)]
        return [
            RerankResult(i, scores[i].outputs.score, documents[i] if return_documents else None, scores[i].prompt_token_ids)
            for i in order
        ]


def _pair_up(firsts: list[Prompt], seconds: list[Prompt]) -> tuple[list[Prompt], list[Prompt]]:
    """vLLM's pairing: one first against every second, or equal-length lists zipped."""
    if not firsts:
        raise InvalidInput("text_1 must not be empty", "text_1")
    if not seconds:
        raise InvalidInput("text_2 must not be empty", "text_2")
    if len(firsts) == 1:
        return firsts * len(seconds), seconds
    if len(firsts) != len(seconds):
        raise InvalidInput(f"text_1 has {len(firsts)} items and text_2 {len(seconds)}: give one text_1 or as many as text_2", "text_2")
    return firsts, seconds


__all__ = ["Engine"]
