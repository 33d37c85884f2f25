"""What a request asks of the engine (``plan``), and the response body from the answers
(``assemble``).

The split exists for the streaming worker: between the two it batches items across requests,
serves some from the cache and runs the rest through the engine (``engine_calls``). Inputs that
are not yet prompt text (chat, Cohere instructions, per-side score cuts) are made text by the
model's ``Renderer`` while planning; ``encoding`` writes vectors and matrices in vLLM's output
encodings.
"""

from .bodies import assemble, check_output, vector_key
from .encoding import BINARY_FORMATS, binary_result, float32_base64, to_bytes
from .engine_calls import (
    ModelCall,
    ModelInput,
    model_call,
    run_call,
    run_plan,
    tokenize_items,
)
from .items import Item, ItemResult, Plan
from .planning import item_labels, plan, plugin_plan, score_pairs
from .rendering import Renderer

__all__ = [
    "BINARY_FORMATS",
    "Item",
    "ItemResult",
    "ModelCall",
    "ModelInput",
    "Plan",
    "Renderer",
    "assemble",
    "binary_result",
    "check_output",
    "float32_base64",
    "item_labels",
    "model_call",
    "plan",
    "plugin_plan",
    "run_call",
    "run_plan",
    "score_pairs",
    "to_bytes",
    "tokenize_items",
    "vector_key",
]
