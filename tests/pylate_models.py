"""Tiny PyLate ColBERT checkpoints, built the same way by the tests and by the script that
recorded PyLate's own outputs for them (``tests/fixtures/pylate_reference.py``).

A checkpoint is a 2-layer random backbone (BERT: the engine's packed forward; ModernBERT: the
transformers backbone) with MiniLM's WordPiece tokenizer plus PyLate's marker tokens ``[Q] `` and
``[D] `` (as ``ColBERT.save`` leaves them: added tokens with rows in the embedding matrix), a
``pylate.models.Dense.Dense`` projection and a ``config_sentence_transformers.json`` holding one
of ``CONFIGS``. The recorded reference names the sha256 of the weights it was computed on, so a
change to this recipe shows up as a fingerprint mismatch, not as a numeric one.
"""

from __future__ import annotations

import hashlib
import string
from pathlib import Path

import builders
import torch

DIM = 24
HIDDEN = 64
MARKERS = ["[Q] ", "[D] "]
# The backbones: a name in fidelity_models.FAMILIES each.
BACKBONES = {"bert": "bert", "modernbert": "modernbert-cls"}
# PyLate settings (config_sentence_transformers.json); keys left out take PyLate's defaults.
CONFIGS: dict[str, dict] = {
    # PyLate's defaults: [Q]/[D] markers, queries padded to 32 with [MASK] that real tokens do not
    # attend to, documents cut at 180 tokens, punctuation dropped from document vectors.
    "defaults": {},
    # Expansion tokens attended, short lengths so both sides are cut, a small skiplist.
    "attended": {"query_length": 12, "document_length": 10, "attend_to_expansion_tokens": True,
                 "skiplist_words": [",", ".", "?", "the"]},
    # No markers, no expansion: queries are cut at query_length and nothing is padded.
    "plain": {"query_prefix": "", "document_prefix": "", "do_query_expansion": False, "query_length": 9,
              "document_length": 64, "skiplist_words": []},
}
QUERIES = [
    "what carries the requests?",
    "  Who answers, and when?  ",
    ("a query that is much longer than the query length of thirty-two tokens, so that PyLate "
    "cuts it before the marker goes in: one, two, three, four, five, six, seven, eight"),
    "what is [MASK]",
]
DOCUMENTS = [
    "Kafka carries the requests; workers answer them.",
    "bread",
    "A longer document about pooling models, late interaction (MaxSim) and ColBERT! " * 2,
    "punctuation only: , . ! ?",
]


def build_checkpoint(out: Path, backbone: str, pylate_config: dict) -> Path:
    """A PyLate-layout checkpoint in ``out`` (deterministic: seeded weights)."""
    from fidelity_models import FAMILIES, build
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(builders.minilm_path()))
    tokenizer.add_tokens(MARKERS)
    build(FAMILIES[BACKBONES[backbone]], "embed", out, vocab_size=len(tokenizer))
    tokenizer.save_pretrained(str(out))
    builders._write_json(out / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ])
    builders._write_json(out / "1_Dense" / "config.json", {
        "in_features": HIDDEN, "out_features": DIM, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity", "use_residual": False,
    })
    weight = torch.randn(DIM, HIDDEN, generator=builders._gen(5)) * 0.2
    save_file({"linear.weight": weight}, str(out / "1_Dense" / "model.safetensors"))
    builders._write_json(out / "sentence_bert_config.json", {"max_seq_length": 256, "do_lower_case": False})
    builders._write_json(out / "config_sentence_transformers.json", {**pylate_config, "similarity_fn_name": "MaxSim"})
    return out


def weights_fingerprint(folder: Path) -> str:
    """sha256 over the weight files (backbone and Dense), in a fixed order."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.safetensors")):
        h.update(f.relative_to(folder).as_posix().encode() + b":" + f.read_bytes())
    return h.hexdigest()


def punctuation() -> list[str]:
    """PyLate's default skiplist."""
    return list(string.punctuation)
