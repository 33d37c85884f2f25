"""Session fixtures: models built once per run, reference libraries loaded once, the corpus."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Everything runs offline: no hub look-ups from transformers / sentence-transformers / the engine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import builders

pytest_plugins = ["services", "streaming"]

torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))

ATOL = 1e-5
CORPUS_N = 500


# ----------------------------------------------------------------------------------------------
# Model folders
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def minilm_path() -> Path:
    return builders.minilm_path()


@pytest.fixture(scope="session")
def splade_path() -> Path:
    return builders.splade_path()


@pytest.fixture(scope="session")
def seq_cls_path(tmp_path_factory) -> Path:
    return builders.seq_classifier(tmp_path_factory.mktemp("seq_cls"), num_labels=3)


@pytest.fixture(scope="session")
def cross_encoder_path(tmp_path_factory) -> Path:
    return builders.cross_encoder(tmp_path_factory.mktemp("cross_encoder"))


@pytest.fixture(scope="session")
def token_cls_path(tmp_path_factory) -> Path:
    return builders.token_classifier(tmp_path_factory.mktemp("token_cls"), num_labels=5)


@pytest.fixture(scope="session")
def colbert_path(tmp_path_factory) -> Path:
    return builders.colbert(tmp_path_factory.mktemp("colbert"), dim=48)


@pytest.fixture(scope="session")
def decoder_left_path(tmp_path_factory) -> Path:
    return builders.decoder(tmp_path_factory.mktemp("qwen2_left"), family="qwen2", padding_side="left")


@pytest.fixture(scope="session")
def decoder_right_path(tmp_path_factory) -> Path:
    return builders.decoder(tmp_path_factory.mktemp("qwen2_right"), family="qwen2", padding_side="right")


@pytest.fixture(scope="session")
def llama_path(tmp_path_factory) -> Path:
    return builders.decoder(tmp_path_factory.mktemp("llama"), family="llama", padding_side="left", seed=11)


@pytest.fixture(scope="session")
def reward_path(tmp_path_factory) -> Path:
    return builders.decoder(tmp_path_factory.mktemp("reward"), family="qwen2", head="seq_cls", num_labels=1, seed=5)


@pytest.fixture(scope="session")
def pickle_only_path(tmp_path_factory) -> Path:
    return builders.pickle_only(tmp_path_factory.mktemp("pickle_only"))


# ----------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def corpus() -> list[str]:
    texts = builders.load_corpus(CORPUS_N)
    assert len(texts) == CORPUS_N, f"corpus at {builders.corpus_path()} has fewer than {CORPUS_N} texts"
    return texts


# ----------------------------------------------------------------------------------------------
# Engines (one per model per run)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def Engine():
    from poolworker import Engine as _Engine

    return _Engine


@pytest.fixture(scope="session")
def PoolerConfig():
    from poolworker import PoolerConfig as _PoolerConfig

    return _PoolerConfig


@pytest.fixture(scope="session")
def minilm_engine(Engine, minilm_path):
    return Engine(str(minilm_path))


# ----------------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def minilm_st(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path))


@pytest.fixture(scope="session")
def minilm_hf(minilm_path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(minilm_path)).eval()


@pytest.fixture(scope="session")
def minilm_corpus_run(corpus, minilm_st, minilm_engine):
    """The first 500 corpus texts through ST (reference) and through the engine, computed once."""
    ref = minilm_st.encode(corpus, batch_size=32, convert_to_tensor=True, normalize_embeddings=False).float().cpu()
    outs = minilm_engine.embed(corpus, truncate_prompt_tokens=-1)
    return {"texts": corpus, "ref": ref, "outs": outs}
