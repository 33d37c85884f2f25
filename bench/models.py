"""Random-weight BERT folders for the benchmarks and the multi-process test.

Speed does not depend on trained weights, so a benchmark can pick any shape: BERT-base (12
layers, hidden 768) to load a CPU or GPU, or a near-free one-layer BERT with hidden 32 that
leaves only the pipeline around the model to measure. Every folder gets MiniLM's tokenizer and
Sentence-Transformers files (mean pooling + normalize), so the engine and sentence-transformers
load the same folder and must agree.
"""

from __future__ import annotations

import json
from pathlib import Path

BERT_BASE = {"hidden": 768, "layers": 12, "heads": 12, "intermediate": 3072}
TINY_BERT = {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64}


def random_bert(out: Path, tokenizer_from: Path, *, hidden: int, layers: int, heads: int, intermediate: int,
                max_positions: int = 512, seed: int = 0) -> Path:
    """A ``BertModel`` of the given shape with seeded random weights in ``out`` (kept when
    ``out`` already holds one), with ``tokenizer_from``'s tokenizer; returns ``out``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = Path(out)
    if (out / "model.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_from))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate, max_position_embeddings=max_positions)
    config.architectures = ["BertModel"]
    BertModel(config).eval().save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    files = {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "sentence_bert_config.json": {"max_seq_length": max_positions, "do_lower_case": False},
        "1_Pooling/config.json": {"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True},
    }
    for name, obj in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    (out / "2_Normalize").mkdir(exist_ok=True)
    return out


def bert_base(out: Path, tokenizer_from: Path, seed: int = 0) -> Path:
    """BERT-base-shaped (12 layers, hidden 768, 12 heads, FFN 3072)."""
    return random_bert(out, tokenizer_from, seed=seed, **BERT_BASE)


def tiny_bert(out: Path, tokenizer_from: Path, seed: int = 0) -> Path:
    """One layer, hidden 32, 2 heads, FFN 64: the forward costs next to nothing."""
    return random_bert(out, tokenizer_from, seed=seed, **TINY_BERT)
