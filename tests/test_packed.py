"""The packed (unpadded) forward: same hidden states as transformers, batch invariance, the
TEI-style batcher, and the automatic fallback to the generic transformers path."""

from __future__ import annotations

import json

import pytest
import torch

from poolworker.engine.packed import (
    build_layout,
    build_packed,
    packed_from_pretrained,
    packed_support,
)
from poolworker.engine.runner import plan_packed_batches

ATOL = 1e-5


def _hf_hidden(model, seqs: list[list[int]], pad_id: int, types: list[list[int]] | None = None) -> list[torch.Tensor]:
    """transformers on one right-padded batch with an attention mask: the reference."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, x in enumerate(seqs):
        ids[r, : len(x)] = torch.tensor(x)
        mask[r, : len(x)] = 1
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        tt = torch.zeros_like(ids)
        for r, x in enumerate(types):
            tt[r, : len(x)] = torch.tensor(x)
        kwargs["token_type_ids"] = tt
    with torch.inference_mode():
        out = model(**kwargs)[0]
    return [out[r, : len(x)] for r, x in enumerate(seqs)]


def _packed_hidden(packed, seqs: list[list[int]], types: list[list[int]] | None = None) -> list[torch.Tensor]:
    layout = build_layout([len(x) for x in seqs], torch.device("cpu"))
    flat = torch.tensor([t for x in seqs for t in x])
    tt = None if types is None else torch.tensor([t for x in types for t in x])
    with torch.inference_mode():
        out = packed(flat, layout, tt)
    return list(torch.split(out, [len(x) for x in seqs]))


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def _random_seqs(n: int, vocab: int, lo: int, hi: int, seed: int, first: int | None = None) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    seqs = [torch.randint(3, vocab, (n_,), generator=g).tolist() for n_ in lengths]
    if first is not None:
        seqs = [[first] + s[1:] for s in seqs]
    return seqs


# ----------------------------------------------------------------------------------------------
# Hidden states match transformers
# ----------------------------------------------------------------------------------------------
def test_minilm_from_safetensors_matches_transformers(minilm_path, minilm_hf, minilm_tokenizer, corpus):
    packed = packed_from_pretrained(minilm_path)  # names read straight from model.safetensors
    seqs = [minilm_tokenizer(t, truncation=True, max_length=256)["input_ids"] for t in corpus[:48]]
    assert _max_diff(_packed_hidden(packed, seqs), _hf_hidden(minilm_hf, seqs, 0)) <= ATOL


def test_minilm_engine_uses_packed_path(minilm_engine):
    assert minilm_engine.model.packed is not None
    assert minilm_engine.model.forward_path.startswith("packed (bert encoder")


def test_bert_token_types_match(cross_encoder_path):
    """Sentence pairs: token_type_ids 0/1, heads kept from transformers (the prefix 'bert.')."""
    from transformers import BertModel

    hf = BertModel.from_pretrained(str(cross_encoder_path)).eval()
    packed = packed_from_pretrained(cross_encoder_path)
    seqs = _random_seqs(12, 30000, 3, 70, seed=3, first=101)
    types = [[0] * (len(s) // 2) + [1] * (len(s) - len(s) // 2) for s in seqs]
    assert _max_diff(_packed_hidden(packed, seqs, types), _hf_hidden(hf, seqs, 0, types)) <= ATOL


@pytest.fixture(scope="module")
def roberta_path(tmp_path_factory):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    out = tmp_path_factory.mktemp("roberta")
    config = RobertaConfig(
        vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=130, pad_token_id=1, type_vocab_size=1, num_labels=2,
    )
    torch.manual_seed(7)
    model = RobertaForSequenceClassification(config).eval()
    config.architectures = ["RobertaForSequenceClassification"]
    model.save_pretrained(str(out), safe_serialization=True)  # names under "roberta."
    return out


def test_roberta_positions_and_names(roberta_path):
    from transformers import RobertaModel

    hf = RobertaModel.from_pretrained(str(roberta_path), add_pooling_layer=False).eval()
    packed = packed_from_pretrained(roberta_path)
    seqs = _random_seqs(10, 300, 1, 120, seed=11, first=0)  # positions up to the table's end
    seqs[3][2] = 1  # a pad id inside a sequence: RoBERTa gives it position padding_idx
    assert _max_diff(_packed_hidden(packed, seqs), _hf_hidden(hf, seqs, 1)) <= ATOL


@pytest.mark.parametrize("fixture", ["decoder_left_path", "llama_path", "reward_path"])
def test_decoders_match_transformers(fixture, request):
    from transformers import AutoModel

    path = request.getfixturevalue(fixture)
    hf = AutoModel.from_pretrained(str(path)).eval()  # the base model, even for the reward head
    packed = packed_from_pretrained(path)
    seqs = _random_seqs(9, 256, 1, 90, seed=5)
    assert _max_diff(_packed_hidden(packed, seqs), _hf_hidden(hf, seqs, 256)) <= ATOL


def test_qwen3_qk_norm_matches(tmp_path):
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(
        vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, intermediate_size=96, max_position_embeddings=256,
    )
    torch.manual_seed(3)
    hf = Qwen3Model(config).eval()
    with torch.no_grad():  # non-trivial q/k norms
        for layer in hf.layers:
            layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
            layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    packed = build_packed(config, hf)
    seqs = _random_seqs(7, 200, 1, 60, seed=9)
    assert _max_diff(_packed_hidden(packed, seqs), _hf_hidden(hf, seqs, 0)) <= ATOL


def test_engine_reward_and_classifier_heads_on_packed(reward_path, seq_cls_path, Engine, monkeypatch):
    """Heads stay transformers modules on the packed backbone's rows: same outputs both ways."""
    texts = ["short", "a somewhat longer text for the classifier", "x" * 40]
    for path, task in ((reward_path, "classify"), (seq_cls_path, "classify")):
        fast = Engine(str(path))
        assert fast.model.packed is not None
        monkeypatch.setenv("POOLWORKER_FORWARD", "transformers")
        slow = Engine(str(path))
        monkeypatch.delenv("POOLWORKER_FORWARD")
        assert slow.model.packed is None and "forced" in slow.model.forward_path
        a = fast.encode(texts, pooling_task=task)
        b = slow.encode(texts, pooling_task=task)
        for x, y in zip(a, b):
            assert torch.allclose(torch.as_tensor(x.outputs.data), torch.as_tensor(y.outputs.data), atol=ATOL)


# ----------------------------------------------------------------------------------------------
# Batch invariance and the batcher
# ----------------------------------------------------------------------------------------------
def test_batch_invariance_mixed_lengths(minilm_engine, corpus):
    """A text alone and inside a batch of 64 mixed lengths: max abs diff <= 1e-5."""
    texts = sorted(corpus[:400], key=len)[::6][:64]  # short to long
    assert len(texts) == 64
    together = minilm_engine.embed(texts, truncate_prompt_tokens=-1)
    worst = 0.0
    for i in range(0, 64, 7):
        alone = minilm_engine.embed([texts[i]], truncate_prompt_tokens=-1)[0]
        diff = (torch.tensor(alone.outputs.embedding) - torch.tensor(together[i].outputs.embedding)).abs().max().item()
        worst = max(worst, diff)
    assert worst <= ATOL


@pytest.fixture(params=["packed", "generic"])
def small_budget_runner(request, minilm_path, Engine, monkeypatch):
    """A MiniLM runner on either forward path with a budget that makes many batches and re-orders
    sequences by length."""
    if request.param == "generic":
        monkeypatch.setenv("POOLWORKER_FORWARD", "transformers")
    runner = Engine(str(minilm_path), max_batch_tokens=300).runner
    assert (runner.packed is None) == (request.param == "generic")
    return runner


def test_runner_keeps_caller_order_across_batches(small_budget_runner, minilm_hf):
    seqs = _random_seqs(40, 30000, 2, 120, seed=21, first=101)
    packed = small_budget_runner.forward(seqs)
    got = list(torch.split(packed.hidden, [len(s) for s in seqs]))
    assert _max_diff(got, _hf_hidden(minilm_hf, seqs, 0)) <= ATOL
    assert packed.input_ids.tolist() == [t for s in seqs for t in s]
    assert packed.cu_seqlens.tolist() == [0, *torch.tensor([len(s) for s in seqs]).cumsum(0).tolist()]


def test_runner_pool_puts_rows_back_in_caller_order(small_budget_runner, minilm_hf):
    """``Runner.pool`` pools batch by batch: each row is the mean of transformers' hidden states of
    that caller's sequence."""
    seqs = _random_seqs(40, 30000, 2, 120, seed=22, first=101)
    seen: list[int] = []

    def mean_rows(part):
        seen.append(len(part))
        return torch.stack([part.hidden[a:b].mean(0) for a, b in zip(part.cu_seqlens[:-1], part.cu_seqlens[1:])])

    pooled = small_budget_runner.pool(seqs, mean_rows)
    expected = torch.stack([h.mean(0) for h in _hf_hidden(minilm_hf, seqs, 0)])
    assert len(seen) > 3 and sum(seen) == len(seqs)
    assert (pooled - expected).abs().max().item() <= ATOL


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("path", ["matmul", "sdpa"])
def test_packed_attention_matches_each_sequence_alone(causal, path, monkeypatch):
    """Both CPU attention paths, on ragged lengths (equal-length runs, padded buckets, GQA), against
    SDPA on each sequence by itself."""
    import torch.nn.functional as F

    from poolworker.engine.packed import attention

    monkeypatch.setattr(attention, "MATMUL_MAX_WIDTH", 10_000 if path == "matmul" else 0)
    lengths = [70, 70, 64, 33, 9, 9, 9, 7, 2, 1]
    n_q, n_kv, d = 4, 2, 16
    g = torch.Generator().manual_seed(4)
    qkv = torch.randn(sum(lengths), n_q + 2 * n_kv, d, generator=g)
    got = attention.packed_attention(qkv, n_q, n_kv, build_layout(lengths, torch.device("cpu")), causal=causal)
    expected = []
    for x in torch.split(qkv, lengths):
        q, k, v = x[:, :n_q].transpose(0, 1), x[:, n_q : n_q + n_kv].transpose(0, 1), x[:, n_q + n_kv :].transpose(0, 1)
        k, v = k.repeat_interleave(n_q // n_kv, 0), v.repeat_interleave(n_q // n_kv, 0)
        expected.append(F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(0, 1).reshape(len(x), n_q * d))
    assert (got - torch.cat(expected)).abs().max().item() <= ATOL


def test_plan_packed_batches_budget():
    lengths = [5, 300, 40, 40, 41, 7, 1000, 2]
    batches = plan_packed_batches(lengths, max_batch_tokens=100, max_batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or sum(lengths[i] for i in b) <= 100  # an over-budget sequence runs alone
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


def test_layout_buckets_cover_every_row():
    layout = build_layout([9, 9, 3, 8, 1, 9], torch.device("cpu"))
    rows = []
    for b in layout.buckets:
        rows += list(range(b.start, b.end)) if b.rows is None else b.rows.tolist()
    assert sorted(rows) == list(range(layout.total))
    assert layout.positions.tolist() == [*range(9), *range(9), *range(3), *range(8), 0, *range(9)]


# ----------------------------------------------------------------------------------------------
# Fallback
# ----------------------------------------------------------------------------------------------
def test_unsupported_architecture_falls_back(tmp_path, Engine, minilm_path):
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    config = DistilBertConfig(vocab_size=30522, dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=128)
    torch.manual_seed(0)
    model = DistilBertModel(config).eval()
    config.architectures = ["DistilBertModel"]
    model.save_pretrained(str(tmp_path), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(minilm_path)).save_pretrained(str(tmp_path))

    assert "distilbert" in packed_support(config)
    engine = Engine(str(tmp_path))
    assert engine.model.packed is None
    assert engine.model.forward_path.startswith("transformers (generic")
    assert "distilbert" in engine.model.forward_path
    assert len(engine.embed(["still works"])[0].outputs.embedding) == 32


def test_forward_env_is_checked(monkeypatch):
    from poolworker.engine.packed import forced_generic

    monkeypatch.setenv("POOLWORKER_FORWARD", "fast")
    with pytest.raises(ValueError, match="POOLWORKER_FORWARD"):
        forced_generic()


def test_packed_shares_weights_with_transformers(minilm_engine):
    """Fused QKV: the transformers module's q/k/v now view the fused tensor (no second copy)."""
    hf_q = minilm_engine.model.backbone.encoder.layer[0].attention.self.query.weight
    fused = minilm_engine.model.packed.layers[0].qkv_w
    assert hf_q.data_ptr() == fused.data_ptr()
    assert json.dumps(minilm_engine.model.forward_path)
