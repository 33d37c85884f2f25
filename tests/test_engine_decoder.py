"""Tiny decoders: LAST-token embeddings and a reward model, against transformers on the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from builders import EOS_TOKEN
from refs import (
    assert_close,
    data,
    decoder_hidden_single,
    decoder_last_left_padded,
    embedding,
)

TEXTS = [
    "hi",
    "A somewhat longer sentence for the decoder, with punctuation!",
    "héllo wörld — unicode bytes ✓",
    "x",
    "The quick brown fox jumps over the lazy dog. " * 4,
]


def _load_ref(path):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    return model, tok


@pytest.fixture(scope="session", params=["left", "right"])
def decoder_case(request, Engine, PoolerConfig, decoder_left_path, decoder_right_path):
    path = decoder_left_path if request.param == "left" else decoder_right_path
    eng = Engine(str(path), pooler_config=PoolerConfig(pooling_type="LAST"))
    model, tok = _load_ref(path)
    assert tok.padding_side == request.param
    return eng, model, tok


def test_decoder_supported_tasks(decoder_case):
    eng, _, _ = decoder_case
    assert "embed" in tuple(eng.supported_tasks)


def test_decoder_last_pooling_single(decoder_case):
    eng, model, tok = decoder_case
    outs = eng.embed(TEXTS)
    assert len(outs) == len(TEXTS)
    for t, o in zip(TEXTS, outs):
        ids = tok(t)["input_ids"]
        assert list(o.prompt_token_ids) == ids
        ref = F.normalize(decoder_hidden_single(model, ids)[-1], dim=-1)
        assert_close(embedding(o), ref, what=f"LAST {t[:12]!r}")


def test_decoder_last_pooling_left_padded_batch(decoder_case):
    eng, model, tok = decoder_case
    pad_id = tok.convert_tokens_to_ids(EOS_TOKEN)
    batch_ids = [tok(t)["input_ids"] for t in TEXTS]
    assert len({len(x) for x in batch_ids}) == len(batch_ids), "lengths must be mixed"
    ref = F.normalize(decoder_last_left_padded(model, batch_ids, pad_id), dim=-1)
    # The padded transformers run and the unpadded one agree (sanity of the reference itself).
    for i, ids in enumerate(batch_ids):
        single = F.normalize(decoder_hidden_single(model, ids)[-1], dim=-1)
        assert_close(ref[i], single, atol=1e-5, what="reference padded vs single")
    outs = eng.embed(TEXTS)
    got = torch.stack([embedding(o) for o in outs])
    assert_close(got, ref, what="engine vs left-padded batch")


def test_decoder_token_id_prompts(decoder_case):
    eng, model, tok = decoder_case
    ids = [tok(t)["input_ids"] for t in TEXTS[:3]]
    outs = eng.embed(ids)
    for i, o in enumerate(outs):
        assert_close(embedding(o), F.normalize(decoder_hidden_single(model, ids[i])[-1], dim=-1), what="ids")


def test_decoder_batch_invariance(decoder_case, corpus):
    eng, _, tok = decoder_case
    pool = [t[: 20 + (i * 37) % 400] for i, t in enumerate(corpus[:64])]
    lens = [len(tok(t)["input_ids"]) for t in pool]
    assert max(lens) >= 4 * min(lens) and max(lens) <= 512
    together = eng.embed(pool)
    worst = 0.0
    for t, o in zip(pool, together):
        alone = eng.embed([t])[0]
        worst = max(worst, (embedding(alone) - embedding(o)).abs().max().item())
    assert worst <= 1e-5, f"batch vs alone max abs diff {worst:.3e}"


def test_llama_last_pooling(Engine, PoolerConfig, llama_path):
    eng = Engine(str(llama_path), pooler_config=PoolerConfig(pooling_type="LAST"))
    model, tok = _load_ref(llama_path)
    outs = eng.embed(TEXTS[:3])
    for t, o in zip(TEXTS[:3], outs):
        ids = tok(t)["input_ids"]
        assert_close(embedding(o), F.normalize(decoder_hidden_single(model, ids)[-1], dim=-1), what="llama")


# ----------------------------------------------------------------------------------------------
# Reward model: Qwen2ForSequenceClassification, num_labels=1
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def reward_engine(Engine, reward_path):
    return Engine(str(reward_path))


@pytest.fixture(scope="session")
def reward_ref(reward_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(reward_path)).eval()
    tok = AutoTokenizer.from_pretrained(str(reward_path))
    assert model.config.pad_token_id is not None

    @torch.no_grad()
    def per_token_logits(ids):
        input_ids = torch.tensor([ids])
        hidden = model.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state
        return model.score(hidden)[0].float()  # [n, 1]

    @torch.no_grad()
    def seq_logits(ids):
        input_ids = torch.tensor([ids])
        return model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits[0].float()  # [1]

    return tok, per_token_logits, seq_logits


def _rows(d: torch.Tensor, n: int) -> torch.Tensor:
    d = torch.as_tensor(d).float()
    assert d.numel() == n, f"reward data has {d.numel()} values for {n} tokens (shape {tuple(d.shape)})"
    assert d.shape[0] == n
    return d.reshape(n, 1)


def test_reward_per_token(reward_engine, reward_ref):
    tok, per_token_logits, _ = reward_ref
    outs = reward_engine.reward(TEXTS)
    assert len(outs) == len(TEXTS)
    for t, o in zip(TEXTS, outs):
        ids = tok(t)["input_ids"]
        logits = per_token_logits(ids)
        assert logits.abs().max() > 0.05
        assert_close(_rows(o.outputs.data, len(ids)), torch.sigmoid(logits), what=f"reward {t[:12]!r}")


def test_reward_equals_encode_token_classify(reward_engine):
    a = reward_engine.reward(TEXTS[:3])
    b = reward_engine.encode(TEXTS[:3], pooling_task="token_classify")
    for x, y in zip(a, b):
        assert_close(data(x), data(y), what="reward vs encode(token_classify)")


def test_reward_raw_scores(reward_engine, reward_ref):
    tok, per_token_logits, _ = reward_ref
    outs = reward_engine.reward(TEXTS[:3], use_activation=False)
    for t, o in zip(TEXTS[:3], outs):
        ids = tok(t)["input_ids"]
        assert_close(_rows(o.outputs.data, len(ids)), per_token_logits(ids), what="raw reward")


def test_reward_model_classify(reward_engine, reward_ref):
    tok, _, seq_logits = reward_ref
    outs = reward_engine.classify(TEXTS)
    for t, o in zip(TEXTS, outs):
        ids = tok(t)["input_ids"]
        expected = torch.sigmoid(seq_logits(ids))
        assert len(o.outputs.probs) == 1
        assert_close(o.outputs.probs, expected, what=f"reward classify {t[:12]!r}")


def test_reward_batch_invariance(reward_engine):
    together = reward_engine.reward(TEXTS)
    for t, o in zip(TEXTS, together):
        alone = reward_engine.reward([t])[0]
        assert_close(data(alone), data(o), what="reward alone vs batch")
