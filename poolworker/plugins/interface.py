"""What an IO processor plugin is: the contract between a plugin and the worker.

A plugin (vLLM's "IO processor" idea) owns a request's input and output shape while the worker
keeps everything in between: it reads the request body (``parse_request``), turns it into the
texts the model pools (``pre_process``), and shapes the pooled outputs into the response data
(``post_process``). The worker parses, batches, caches and publishes as for any request; the
plugin never sees the queue. Plugins are stateless between calls — the parsed input travels
with the request from ``pre_process`` to ``post_process`` — so one plugin object serves every
request of its model from the receive and publish threads at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class PluginInputError(ValueError):
    """The request's data is not what the plugin accepts; answered as ``invalid_request`` with
    ``param`` (default ``data``), never a crash or a dead letter."""

    def __init__(self, message: str, param: str = "data") -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class PluginContext:
    """What a plugin may know of the model it serves."""

    model: str  # the name requests route by
    tokenizer: Any  # the model's Hugging Face tokenizer (fast)
    tasks: tuple[str, ...]  # pooling tasks the model supports
    max_model_len: int  # tokens per sequence, special tokens included


@dataclass(frozen=True)
class PluginPrompts:
    """The texts to pool for one request and the pooling task to run on each."""

    texts: tuple[str, ...]
    task: str = "embed"


@dataclass(frozen=True)
class PluginOutput:
    """One pooled text: ``data`` is the task's output (a vector for ``embed``, a matrix for
    the token tasks, probabilities for ``classify``) as float32."""

    index: int
    data: np.ndarray
    num_tokens: int


class IOProcessor(ABC):
    """Base class of plugins. Subclass it, implement the three methods, and register the class
    under the entry point group ``poolworker.io_processors`` (see docs/plugins.md)."""

    def __init__(self, context: PluginContext) -> None:
        self.context = context

    @abstractmethod
    def parse_request(self, body: Mapping[str, Any]) -> Any:
        """Validate the request (its ``data`` field, usually) into the plugin's own input;
        raise ``PluginInputError`` for bad input."""

    @abstractmethod
    def pre_process(self, parsed: Any, request_id: str | None = None) -> PluginPrompts:
        """The texts to pool for ``parsed`` (at least one) and the task to pool them with."""

    @abstractmethod
    def post_process(self, parsed: Any, outputs: Sequence[PluginOutput], request_id: str | None = None) -> Any:
        """The response's ``data`` (JSON-serializable) from the pooled outputs, in the order
        ``pre_process`` gave the texts."""


@dataclass(frozen=True)
class PluginRequest:
    """A request after ``parse_request`` and ``pre_process``: what travels (inside the worker's
    ``Prepared``) to ``post_process`` on the publish stage."""

    processor: IOProcessor
    parsed: Any
    prompts: PluginPrompts

    def response_data(self, outputs: Sequence[PluginOutput], request_id: str | None = None) -> Any:
        return self.processor.post_process(self.parsed, outputs, request_id)



__all__ = ["IOProcessor", "PluginContext", "PluginInputError", "PluginOutput", "PluginPrompts", "PluginRequest"]
