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
        return [self.tokenizer.render_chat(c, where, add_generation_prompt=request.add_generation_prompt,
                                           continue_final_message=request.continue_final_message,
                                           template_kwargs=request.chat_template_kwargs)
                for c, where in zip(conversations, labels)]

    def cohere_texts(self, request: PoolingRequest) -> list[str]:
        """The texts of a Cohere body with its ``input_type`` instruction applied: as a system
        message through the chat template when the model has one, else as a prefix."""
        texts = list(request.texts or [])
        if request.input_type is None:
            return texts
        if not self.instructions:
            raise InvalidInput(f"Unsupported input_type {request.input_type!r}. This model does not define any "
                               "input_type task instructions.", "input_type")
        prefix = self.instructions.get(request.input_type)
        if prefix is None:
            raise InvalidInput(f"Unsupported input_type {request.input_type!r}. Supported values: "
                               f"{', '.join(sorted(self.instructions))}", "input_type")
        if not prefix:
            return texts
        if self.tokenizer.has_chat_template:
            return [self.tokenizer.render_chat([{"role": "system", "content": prefix}, {"role": "user", "content": t}],
                                               f"texts[{i}]") for i, t in enumerate(texts)]
        return [prefix + t for t in texts]

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


__all__ = ["Renderer"]
