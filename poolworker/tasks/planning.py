"""``plan``: a validated request → the engine work it needs, as items.

Shape checks already happened in ``PoolingRequest``; what is left here are the rules that need
two fields at once (score pairing) and the mapping of vLLM task names to engine calls.
"""

from __future__ import annotations

from poolworker.protocol import ErrorInfo, InvalidRequest, PoolingRequest

from .items import MULTI_TASK_SEPARATOR, Item, Plan, Scalar
from .rendering import Renderer

# The pooling task behind each encode-style task; "pooling" takes its own from the request.
_ENCODE_TASKS = {
    "embed": "embed",
    "classify": "classify",
    "token_embed": "token_embed",
    "token_classify": "token_classify",
    "reward": "token_classify",
}

# Options that change an item's output, per engine call: they scope batching and the cache.
# (Chat rendering, instructions and per-side cuts change the item's text itself, so the text
# carries them.)
_ENCODE_OPTIONS = ("dimensions", "truncate_prompt_tokens", "truncation_side", "use_activation", "padding")
_SCORE_OPTIONS = ("truncate_prompt_tokens", "truncation_side", "use_activation", "padding")


def _options(request: PoolingRequest, names: tuple[str, ...], **resolved: Scalar) -> tuple[tuple[str, Scalar], ...]:
    return tuple(sorted([(name, getattr(request, name)) for name in names] + list(resolved.items())))


def _prompt_items(prompts: str | list) -> tuple[Item, ...]:
    """vLLM's prompt forms: a text, texts, one token-id list, or several."""
    if isinstance(prompts, str):
        return (Item(prompts),)
    if prompts and isinstance(prompts[0], int):
        return (Item(tuple(prompts)),)
    return tuple(Item(p if isinstance(p, str) else tuple(p)) for p in prompts)


def _as_list(texts: str | list[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def score_pairs(request: PoolingRequest) -> list[tuple[str, str]]:
    """The (first, second) text pairs of a score or rerank request.

    One first text is scored against every second text (1-vs-N); equal-length lists are zipped
    (N-vs-N); anything else is ambiguous and an error naming ``text_2``.
    """
    if request.task == "rerank":
        return [(request.query, doc) for doc in request.documents]  # type: ignore[union-attr, misc]
    firsts, seconds = _as_list(request.text_1), _as_list(request.text_2)  # type: ignore[arg-type]
    if len(firsts) == 1:
        return [(firsts[0], s) for s in seconds]
    if len(firsts) != len(seconds):
        raise InvalidRequest.for_request(
            request,
            ErrorInfo(
                type="invalid_request",
                message=f"text_1 has {len(firsts)} items and text_2 has {len(seconds)}: give one text_1, or as many as text_2",
                param="text_2",
            ),
        )
    return list(zip(firsts, seconds))


def plan(request: PoolingRequest, renderer: Renderer | None = None) -> Plan:
    """The engine work for ``request``; raises ``InvalidRequest`` for semantic errors and the
    renderer's ``EngineError`` for input its model cannot take (no chat template, an unknown
    ``input_type``). ``renderer`` (the model's) is needed only for chat, Cohere ``input_type``
    and per-side score limits."""
    if request.task == "plugin":
        raise TypeError("a plugin request is planned from its plugin's prompts: plugin_plan")
    if request.task in ("score", "rerank"):
        pairs = score_pairs(request)
        if request.max_tokens_per_query or request.max_tokens_per_doc:
            pairs = _needed(renderer).cut_pairs(request, pairs)
        items = tuple(Item(first, second) for first, second in pairs)
        return Plan("score", None, _options(request, _SCORE_OPTIONS), items)
    pooling_task = request.pooling_task if request.task == "pooling" else _ENCODE_TASKS[request.task]
    if request.pooling_tasks is not None:  # several tasks, one forward: vLLM's "embed&token_classify" naming
        pooling_task = MULTI_TASK_SEPARATOR.join(request.pooling_tasks)
    resolved: dict[str, Scalar] = {"add_special_tokens": request.special_tokens}
    if request.form == "completion" and request.input_type is not None:  # the texts' role (PyLate checkpoints)
        resolved["input_type"] = request.input_type
    if request.form == "cohere":
        if request.truncate == "NONE" and request.max_tokens is not None:
            resolved["refuse_above"] = request.max_tokens
        rendered = request.input_type is not None or request.inputs is not None
        if rendered and _needed(renderer).cohere_through_template(request):
            resolved["add_special_tokens"] = False
    options = _options(request, _ENCODE_OPTIONS, **resolved)
    return Plan("encode", pooling_task, options, _prompt_items(_prompts(request, renderer)))


def plugin_plan(request: PoolingRequest, task: str, texts: tuple[str, ...]) -> Plan:
    """The engine work of a ``plugin`` request: pool each text its plugin's ``pre_process``
    gave with ``task``, under the request's common options (truncation, padding)."""
    options = _options(request, _ENCODE_OPTIONS, add_special_tokens=request.special_tokens)
    return Plan("encode", task, options, tuple(Item(text) for text in texts))


def _prompts(request: PoolingRequest, renderer: Renderer | None) -> str | list:
    if request.form == "chat":
        return _needed(renderer).conversations(request)
    if request.form == "cohere" and (request.input_type is not None or request.inputs is not None):
        return _needed(renderer).cohere_texts(request)
    return request.input  # type: ignore[return-value]


def _needed(renderer: Renderer | None) -> Renderer:
    if renderer is None:
        raise TypeError("this request needs its model's Renderer to be planned")
    return renderer


def item_labels(request: PoolingRequest, work: Plan) -> list[str]:
    """The request field each item came from (``input[3]``, ``documents[0]``), so an error
    about one item names what the caller must fix."""
    if request.task == "plugin":  # the texts are the plugin's, made from data
        return ["data"] * len(work.items)
    if work.engine_call == "encode" and request.form == "chat":
        return ["messages"] if len(work.items) == 1 else [f"messages[{i}]" for i in range(len(work.items))]
    if work.engine_call == "encode":
        prompts = request.input
        field = ("inputs" if request.inputs is not None else "texts") if request.form == "cohere" else "input"
        single = isinstance(prompts, str) or (bool(prompts) and isinstance(prompts[0], int))  # type: ignore[index]
        return [field] if single else [f"{field}[{i}]" for i in range(len(work.items))]
    field = "documents" if request.task == "rerank" else "text_2"
    if isinstance(getattr(request, field), str):
        return [field] * len(work.items)
    return [f"{field}[{i}]" for i in range(len(work.items))]
