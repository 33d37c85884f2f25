"""Score templates: how a (query, document) pair becomes the one prompt a generative reranker reads.

A reranker made from a generative model was trained on one prompt format; scoring the bare pair
gives scores that look plausible and are wrong. The template is Jinja, rendered in a sandbox
with the variables vLLM's score templates use, so vLLM's template files work unchanged:
``messages`` (``[{"role": "query", ...}, {"role": "document", ...}]``), plus ``query``,
``document`` and ``instruction`` (None unless given).

``is_original_qwen3_reranker`` models get the Qwen3-Reranker format of its model card by default.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

# The prompt of the Qwen3-Reranker model card: system judgement instruction, the user turn with
# instruction / query / document, and an assistant turn whose empty thinking block is closed, so
# the next token is the answer ("yes" or "no").
QWEN3_RERANKER_TEMPLATE = (
    "<|im_start|>system\n"
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
    'Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
    "<Instruct>: {{ instruction or 'Given a web search query, retrieve relevant passages that answer the query' }}\n"
    "<Query>: {{ query }}\n"
    "<Document>: {{ document }}<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<think>\n\n</think>\n\n"
)


class ScoreTemplate:
    """A compiled template; ``render`` gives the prompt text of one pair."""

    def __init__(self, source: str, name: str = "custom") -> None:
        env = ImmutableSandboxedEnvironment(keep_trailing_newline=True, undefined=StrictUndefined)
        self.template = env.from_string(source)
        self.source = source
        self.name = name

    def render(self, query: str, document: str, instruction: str | None = None) -> str:
        messages = [{"role": "query", "content": query}, {"role": "document", "content": document}]
        return self.template.render(messages=messages, query=query, document=document, instruction=instruction)


def resolve_score_template(template: str | Path | None, config) -> ScoreTemplate | None:
    """``template`` (the text, or a path to a file holding it), else the model's default (the
    Qwen3-Reranker format for ``is_original_qwen3_reranker``), else None: pairs are then
    tokenized as the tokenizer pairs two texts."""
    if template is not None:
        path = Path(template) if isinstance(template, Path) or (len(str(template)) < 4096 and "\n" not in str(template)) else None
        if path is not None and path.is_file():
            return ScoreTemplate(path.read_text(encoding="utf-8"), path.name)
        if isinstance(template, Path):
            raise FileNotFoundError(f"score template {template} does not exist")
        return ScoreTemplate(template)
    if getattr(config, "is_original_qwen3_reranker", False):
        return ScoreTemplate(QWEN3_RERANKER_TEMPLATE, "qwen3-reranker")
    return None


__all__ = ["QWEN3_RERANKER_TEMPLATE", "ScoreTemplate", "resolve_score_template"]
