"""bge-m3 (issue 14, item 4): dense, sparse and ColBERT outputs of one XLM-R encoder, served with
``hf_overrides={"architectures": ["BgeM3EmbeddingModel"]}``, and all three from one forward pass.

FlagEmbedding (the reference implementation) does not import with this transformers (its
package imports ``transformers.modeling_attn_mask_utils``, gone in transformers 5), so the
reference is built here from its published formulas (``BGEM3FlagModel``: ``_dense_embedding``
CLS, ``_colbert_embedding`` = ``colbert_linear`` on every token after CLS, both normalized;
``_process_token_weights`` = max ``relu(sparse_linear(h))`` per token id, the cls / eos / pad /
unk tokens left out) with transformers' ``XLMRobertaModel`` on the same weights, each text alone.
``token_classify`` rows follow vLLM's layout (BOS and EOS rows removed). Nothing here comes from
the code under test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fidelity_models import FAMILIES, build, write_st_modules, xlmr_tokenizer
from refs import as_tensor, assert_clean_error

ATOL = 1e-4
BGE_M3 = {"architectures": ["BgeM3EmbeddingModel"]}
TEXTS = ["kafka", "the log of kafka is the log", "Kafka carries the requests, and the workers answer them.", "log " * 10]
COLBERT_DIM = 48


def _heads(seed: int = 11) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {
        # A bias around zero, so relu leaves some weights at 0 and the max per token matters.
        "sparse_linear": {"weight": torch.randn(1, 64, generator=gen) * 0.3, "bias": torch.tensor([0.05])},
        "colbert_linear": {"weight": torch.randn(COLBERT_DIM, 64, generator=gen) * 0.2, "bias": torch.randn(COLBERT_DIM, generator=gen) * 0.1},
    }


def _build(out: Path, *, pickled: bool = False) -> Path:
    tok = xlmr_tokenizer()
    build(FAMILIES["xlm-roberta"], "embed", out, tokenizer=tok, vocab_size=len(tok), pad_token_id=1, bos_token_id=0, eos_token_id=2)
    write_st_modules(out, 64, "cls")
    for stem, state in _heads().items():
        if pickled:
            torch.save(state, out / f"{stem}.pt")
        else:
            from safetensors.torch import save_file

            save_file(state, str(out / f"{stem}.safetensors"))
    return out


@pytest.fixture(scope="module")
def bge_m3_path(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("bge-m3"))


@pytest.fixture(scope="module")
def engine(bge_m3_path):
    from poolworker import Engine

    return Engine(str(bge_m3_path), device="cpu", hf_overrides=BGE_M3)


@pytest.fixture(scope="module")
def reference(bge_m3_path):
    """FlagEmbedding's outputs for one text: (ids, dense, colbert, lexical weights, vLLM sparse rows)."""
    from transformers import AutoTokenizer, XLMRobertaModel

    model = XLMRobertaModel.from_pretrained(str(bge_m3_path)).eval()
    tok = AutoTokenizer.from_pretrained(str(bge_m3_path))
    heads = _heads()
    sparse_w, sparse_b = heads["sparse_linear"]["weight"], heads["sparse_linear"]["bias"]
    colbert_w, colbert_b = heads["colbert_linear"]["weight"], heads["colbert_linear"]["bias"]
    unused = {tok.convert_tokens_to_ids(tok.special_tokens_map[k]) for k in ("cls_token", "eos_token", "pad_token", "unk_token")}

    @torch.no_grad()
    def run(text: str):
        ids = tok(text)["input_ids"]
        h = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).last_hidden_state[0]
        weights = torch.relu(h @ sparse_w.T + sparse_b)[:, 0]
        lexical: dict[int, float] = {}
        for token, w in zip(ids, weights.tolist()):
            if token not in unused and w > 0 and w > lexical.get(token, 0.0):
                lexical[token] = w
        return {
            "ids": ids,
            "embed": F.normalize(h[0], dim=-1),
            "token_embed": F.normalize(h[1:] @ colbert_w.T + colbert_b, dim=-1),
            "lexical": lexical,
            "token_classify": torch.relu(h[1:-1] @ sparse_w.T + sparse_b),
        }

    return run


def _close(actual, expected, what: str) -> None:
    actual, expected = as_tensor(actual), as_tensor(expected)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual - expected).abs().max().item()
    assert diff <= ATOL, f"{what}: max abs diff {diff:.3e}"


def test_tasks_and_description(engine):
    assert engine.supported_tasks == ("embed", "token_embed", "token_classify")
    assert engine.default_task == "embed" and engine.score_mode == "bi-encoder"
    assert "bge-m3" in engine.describe()["head"]


@pytest.mark.parametrize("task", ["embed", "token_embed", "token_classify"])
def test_each_output_matches_flagembedding_formulas(task, engine, reference):
    expected = [reference(t)[task] for t in TEXTS]
    batched = engine.encode(TEXTS, pooling_task=task, use_tqdm=False)
    alone = [engine.encode([t], pooling_task=task, use_tqdm=False)[0] for t in TEXTS]
    for text, b, a, e in zip(TEXTS, batched, alone, expected):
        _close(b.outputs.data, e, f"{task} batched {text[:15]!r}")
        _close(a.outputs.data, e, f"{task} alone {text[:15]!r}")


def test_dense_matches_sentence_transformers(engine, bge_m3_path):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(bge_m3_path), device="cpu")
    expected = st.encode(TEXTS, batch_size=1, convert_to_tensor=True).float()
    _close(torch.stack([as_tensor(o.outputs.embedding) for o in engine.embed(TEXTS, use_tqdm=False)]), expected, "dense vs ST")


def test_three_outputs_from_one_forward(engine, reference, monkeypatch):
    calls = []
    forward = engine.runner.forward
    monkeypatch.setattr(engine.runner, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    outs = engine.encode_multi(TEXTS, pooling_tasks=["embed", "token_classify", "token_embed"], use_tqdm=False)
    assert len(calls) == 1, "dense, sparse and ColBERT must come from one forward pass"
    for text, out in zip(TEXTS, outs):
        ref = reference(text)
        assert out.prompt_token_ids == ref["ids"]
        for task in ("embed", "token_embed", "token_classify"):
            _close(out.outputs.data[task], ref[task], f"multi {task} {text[:15]!r}")
        lexical = out.outputs.lexical_weights
        assert lexical is not None and set(lexical) == set(ref["lexical"]), (lexical, ref["lexical"])
        assert all(abs(lexical[k] - v) <= ATOL for k, v in ref["lexical"].items())


def test_a_worker_request_asks_for_all_three_at_once(engine, reference):
    """``pooling_tasks`` on task ``pooling``, through the worker's own protocol and task code
    (parse → plan → tokenize → one compute_many → the /pooling body), against the formulas."""
    import json

    from poolworker.protocol import InvalidRequest, parse_request
    from poolworker.tasks import assemble, check_output, model_call, plan, run_plan

    body = {"request_id": "m3", "task": "pooling", "input": TEXTS, "pooling_tasks": ["embed", "token_embed", "token_classify"]}
    request = parse_request(json.dumps(body).encode())
    work = plan(request)
    call, _ = model_call(engine, work)
    assert call.mode == "multi" and call.tasks == ("embed", "token_embed", "token_classify")
    answer = assemble(request, work, run_plan(engine, work), model="m3")
    assert answer["usage"]["prompt_tokens"] == sum(len(reference(t)["ids"]) for t in TEXTS)
    for text, item in zip(TEXTS, answer["data"]):
        ref = reference(text)
        for task in ("embed", "token_embed", "token_classify"):
            _close(item["data"][task], ref[task], f"worker {task} {text[:15]!r}")
        lexical = {int(k): v for k, v in item["data"]["lexical_weights"].items()}
        assert set(lexical) == set(ref["lexical"]) and all(abs(lexical[k] - v) <= ATOL for k, v in ref["lexical"].items())
    binary = parse_request(json.dumps({**body, "encoding_format": "base64"}).encode())
    with pytest.raises(ValueError, match="float only"):
        check_output(binary, model_call(engine, plan(binary))[0])
    with pytest.raises(InvalidRequest) as err:
        parse_request(json.dumps({**body, "pooling_task": "embed"}).encode())
    assert err.value.error.param == "pooling_tasks"
    other_task = parse_request(json.dumps({**body, "task": "embed"}).encode())  # a field embed does not read
    assert other_task.pooling_tasks is None and "pooling_tasks" in other_task.ignored


def test_multi_request_checks(engine):
    assert_clean_error(lambda: engine.encode_multi(TEXTS, pooling_tasks=["embed", "embed"]), "twice")
    assert_clean_error(lambda: engine.encode_multi(TEXTS, pooling_tasks=["classify"]), "cannot do 'classify'")
    assert_clean_error(lambda: engine.encode_multi(TEXTS, pooling_tasks=[]), "pooling_tasks")
    assert_clean_error(lambda: engine.encode_multi(TEXTS, pooling_tasks=["token_classify"], dimensions=8), "dimensions")
    assert_clean_error(lambda: engine.encode(TEXTS, pooling_task="token_embed", dimensions=COLBERT_DIM + 1), "ColBERT size")


def test_encode_multi_on_a_classifier_equals_separate_calls(tmp_path):
    """Several outputs from one pass is not bge-m3 only: a decoder classifier's classify and
    token_classify (reward rows) come out as ``encode`` gives them one task at a time."""
    from poolworker import Engine

    engine = Engine(str(build(FAMILIES["qwen2"], "classify", tmp_path)), device="cpu")
    multi = engine.encode_multi(TEXTS, pooling_tasks=["classify", "token_classify"], use_tqdm=False)
    for task in ("classify", "token_classify"):
        for one, many in zip(engine.encode(TEXTS, pooling_task=task, use_tqdm=False), multi):
            _close(many.outputs.data[task], one.outputs.data, f"qwen2 {task}")
    assert all(m.outputs.lexical_weights is None for m in multi)


def test_step_pooling_does_not_apply(bge_m3_path):
    from poolworker import Engine

    for cfg in ({"pooling_type": "STEP"}, {"returned_token_ids": [0]}):
        assert_clean_error(lambda cfg=cfg: Engine(str(bge_m3_path), device="cpu", hf_overrides=BGE_M3, pooler_config=cfg), "bge-m3")


def test_without_the_override_it_is_a_dense_embedder(bge_m3_path, reference):
    from poolworker import Engine

    plain = Engine(str(bge_m3_path), device="cpu")
    assert plain.supported_tasks == ("embed", "token_embed")
    _close(plain.embed(TEXTS[:1], use_tqdm=False)[0].outputs.embedding, reference(TEXTS[0])["embed"], "plain dense")


def test_pickled_head_files_need_allow_pickle(tmp_path, reference):
    from poolworker import Engine
    from poolworker.engine import UnsafeWeightsError

    path = _build(tmp_path, pickled=True)
    assert_clean_error(lambda: Engine(str(path), device="cpu", hf_overrides=BGE_M3), "sparse_linear.pt", "allow_pickle",
                       types=(UnsafeWeightsError,))
    engine = Engine(str(path), device="cpu", hf_overrides=BGE_M3, allow_pickle=True)
    _close(engine.encode(TEXTS[1:2], pooling_task="token_embed", use_tqdm=False)[0].outputs.data, reference(TEXTS[1])["token_embed"], "from .pt")


def test_missing_head_files_and_other_families_are_refused(tmp_path):
    from poolworker import Engine

    path = build(FAMILIES["xlm-roberta"], "embed", tmp_path / "bare")
    assert_clean_error(lambda: Engine(str(path), device="cpu", hf_overrides=BGE_M3), "sparse_linear", types=(FileNotFoundError,))
    bert = build(FAMILIES["bert"], "embed", tmp_path / "bert")
    assert_clean_error(lambda: Engine(str(bert), device="cpu", hf_overrides=BGE_M3), "bert", "not supported")


def test_multi_task_requests_through_kafka_with_a_cache(broker, engine, reference):
    """The whole worker (receive → infer → publish) with a result cache: a multi-task request is
    answered (and, holding several arrays per item, never cached), while a single-task request of
    the same text still is."""
    from streaming import RunningWorker, worker_settings

    from poolworker.cache import make_cache
    from poolworker.client import PoolClient
    from poolworker.metrics import Metrics
    from poolworker.worker import Worker

    settings = worker_settings(broker)
    cache = make_cache(None, dev=True)
    running = RunningWorker(Worker(settings, engines={"m3": engine}, cache=cache, metrics=Metrics())).start()
    try:
        with PoolClient(broker.bootstrap_servers, requests_topic=settings.requests_topic,
                        results_topic=settings.results_topic) as client:
            for _ in range(2):  # the second round would hit the cache if multi-task items were cached
                answer = client.encode(TEXTS[1], pooling_tasks=["embed", "token_classify"], timeout_s=120)
                assert answer["error"] is None, answer["error"]
                item = answer["data"][0]["data"]
                _close(item["embed"], reference(TEXTS[1])["embed"], "kafka embed")
                _close(item["token_classify"], reference(TEXTS[1])["token_classify"], "kafka sparse")
            single = client.encode(TEXTS[1], pooling_task="embed", timeout_s=120)
            _close(single["data"][0]["data"], reference(TEXTS[1])["embed"], "kafka single embed")
    finally:
        running.stop()
