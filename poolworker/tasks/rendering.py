"""``Renderer``: a request's inputs → the texts one model's tokenizer gets.

Some inputs are not yet prompt text when they arrive: chat conversations go through the
model's chat template, a Cohere ``input_type`` puts the model's task instruction before each
text, and ``max_tokens_per_query``/``max_tokens_per_doc`` cut score sides before the pairs are
built. Each needs the model (its tokenizer, template, instructions, length), so ``plan`` asks a
``Renderer`` for them; the rendered texts are the plan's items, which is what makes the cache
key of a chat item its exact prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from poolworker.engine.errors import InvalidInput
from poolworker.engine.instructions import task_instructions
from poolworker.protocol import PoolingRequest

if TYPE_CHECKING:
    from poolworker.engine import Engine


class Renderer:
    """Renders for one engine; made once per served model (it reads the model's files)."""

    def __init__(self, engine: Engine) -> None:
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len
        self.instructions = task_instructions(engine.model.config, Path(engine.model.path))

    def conversations(self, request: PoolingRequest) -> list[str]:
        """One prompt text per conversation of a chat request."""
        conversations = request.messages or []
        labels = ["messages"] if len(conversations) == 1 else [f"messages[{i}]" for i in range(len(conversations))]
        return [self.tokenizer.render_chat(_text_messages(c), where, add_generation_prompt=request.add_generation_prompt,
                                           continue_final_message=request.continue_final_message,
                                           template_kwargs=request.chat_template_kwargs)
                for c, where in zip(conversations, labels)]

    def cohere_through_template(self, request: PoolingRequest) -> bool:
        """Whether ``cohere_texts`` renders through the chat template (the template then writes
        the special tokens, so the tokenizer adds none, as for any chat input)."""
        return request.inputs is not None or (bool(self._instruction(request.input_type)) and self.tokenizer.has_chat_template)

    def cohere_texts(self, request: PoolingRequest) -> list[str]:
        """The prompts of a Cohere body: ``inputs`` (content lists) through the chat template;
        ``texts`` with the ``input_type`` instruction applied, as a system message through the
        chat template when the model has one, else as a prefix."""
        prefix = self._instruction(request.input_type)
        if request.inputs is not None:  # content lists: always through the chat template, as vLLM renders them
            system = [{"role": "system", "content": prefix}] if prefix else []
            return [self.tokenizer.render_chat(_text_messages(system + [{"role": "user", "content": item["content"]}]),
                                               f"inputs[{i}]") for i, item in enumerate(request.inputs)]
        texts = list(request.texts or [])
        if not prefix:
            return texts
        if self.tokenizer.has_chat_template:
            return [self.tokenizer.render_chat([{"role": "system", "content": prefix}, {"role": "user", "content": t}],
                                               f"texts[{i}]") for i, t in enumerate(texts)]
        return [prefix + t for t in texts]

    def _instruction(self, input_type: str | None) -> str | None:
        """The model's prefix for a Cohere ``input_type`` (None: no input_type, or an empty one)."""
        if input_type is None:
            return None
        if not self.instructions:
            raise InvalidInput(f"Unsupported input_type {input_type!r}. This model does not define any "
                               "input_type task instructions.", "input_type")
        prefix = self.instructions.get(input_type)
        if prefix is None:
            raise InvalidInput(f"Unsupported input_type {input_type!r}. Supported values: "
                               f"{', '.join(sorted(self.instructions))}", "input_type")
        return prefix or None

    def cut_pairs(self, request: PoolingRequest, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Score pairs with each side cut to its token limit (0: no limit)."""
        per_query = self._limit(request.max_tokens_per_query, "max_tokens_per_query")
        per_doc = self._limit(request.max_tokens_per_doc, "max_tokens_per_doc")
        cut_query = {q: self.tokenizer.cut_text(q, per_query) for q in {q for q, _ in pairs}} if per_query else {}
        return [(cut_query.get(q, q), self.tokenizer.cut_text(d, per_doc) if per_doc else d) for q, d in pairs]

    def _limit(self, value: int, name: str) -> int:
        if value >= self.max_model_len:
            raise InvalidInput(f"{name} ({value}) must be less than max_model_len ({self.max_model_len}).", name)
        return value


def _text_messages(conversation: list[dict]) -> list[dict]:
    """Messages whose content is a list of text parts get it as one string, the parts joined by
    newlines (vLLM's "string" content format, which most templates expect: they concatenate
    ``message['content']``)."""
    return [{**m, "content": "\n".join(p["text"] for p in m["content"])} if isinstance(m.get("content"), list) else m
            for m in conversation]


__all__ = ["Renderer"]
