"""What a request asks of the engine (``plan``), and the response body from the answers
(``assemble``).

The split exists for the streaming worker: between the two it batches items across requests,
serves some from the cache and runs the rest through the engine (``run_plan``).
"""

from .bodies import assemble, float32_base64
from .engine_calls import run_plan
from .items import Item, ItemResult, Plan
from .planning import plan, score_pairs

__all__ = ["Item", "ItemResult", "Plan", "assemble", "float32_base64", "plan", "run_plan", "score_pairs"]
