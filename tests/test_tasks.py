"""plan → engine → assemble for every task, checked against the engine's own methods on the
bundled all-MiniLM-L6-v2 (and a seeded classifier built on its weights)."""

from __future__ import annotations

import base64
import json
import math
import struct
from dataclasses import replace

import numpy as np
import pytest

from poolworker import Engine
from poolworker.protocol import (
    InvalidRequest,
    PoolingRequest,
    encode_message,
    parse_request,
)
from poolworker.tasks import (
    Item,
    ItemResult,
    Plan,
    assemble,
    float32_base64,
    plan,
    run_plan,
)

DOCS = [
    "Kafka partitions spread load over consumers.",
    "Bananas are rich in potassium.",
    "Consumer groups rebalance when members join or leave.",
    "The offset is committed after the result is acknowledged.",
]
QUERY = "How do consumer groups scale?"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine("all-MiniLM-L6-v2")


def request(**body) -> PoolingRequest:
    return parse_request(json.dumps({"request_id": "t-1", **body}).encode())


def respond(engine: Engine, req: PoolingRequest) -> tuple[dict, list[ItemResult]]:
    work = plan(req)
    results = run_plan(engine, work)
    return assemble(req, work, results, model=engine.model_name), results


def decode_f32(text: str) -> list[float]:
    raw = base64.b64decode(text, validate=True)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def plain(values) -> list:
    """Body values as Python lists, whether the engine gave lists or numpy arrays."""
    return np.asarray(values).tolist()


def close(a: list[float], b: list[float], tol: float = 1e-6) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------------
# plan
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "given, items",
    [
        ("one text", (Item("one text"),)),
        (["a", "b", "a"], (Item("a"), Item("b"), Item("a"))),
        ([101, 7592, 102], (Item((101, 7592, 102)),)),
        ([[101, 102], [101, 7592, 102]], (Item((101, 102)), Item((101, 7592, 102)))),
    ],
    ids=["str", "list-of-str", "token-ids", "list-of-token-ids"],
)
def test_embed_items_follow_the_prompt_forms(given, items):
    assert plan(request(task="embed", input=given)).items == items


def test_encode_plan_carries_every_output_changing_option_sorted():
    work = plan(request(task="embed", input="x", dimensions=64, truncation_side="left", encoding_format="base64"))
    assert work.engine_call == "encode" and work.pooling_task == "embed"
    assert work.options == (("add_special_tokens", True), ("dimensions", 64), ("padding", None), ("truncate_prompt_tokens", None),
                            ("truncation_side", "left"), ("use_activation", None))
    # encoding_format changes the body, not the engine's output: same group, same cache scope
    assert plan(request(task="embed", input="y", dimensions=64, truncation_side="left")).group_key() == work.group_key()
    assert plan(request(task="embed", input="y", dimensions=32, truncation_side="left")).group_key() != work.group_key()


@pytest.mark.parametrize(
    "body, pooling_task",
    [
        ({"task": "classify"}, "classify"),
        ({"task": "token_embed"}, "token_embed"),
        ({"task": "token_classify"}, "token_classify"),
        ({"task": "reward"}, "token_classify"),
        ({"task": "pooling", "pooling_task": "token_embed"}, "token_embed"),
        ({"task": "pooling"}, None),
    ],
)
def test_pooling_task_per_task(body, pooling_task):
    work = plan(request(input="x", **body))
    assert (work.engine_call, work.pooling_task) == ("encode", pooling_task)


def test_score_pairs_one_vs_n_and_n_vs_n():
    work = plan(request(task="score", text_1="q", text_2=["a", "b"], use_activation=False))
    assert work.engine_call == "score" and work.pooling_task is None
    assert work.items == (Item("q", "a"), Item("q", "b"))
    assert work.options == (("padding", None), ("truncate_prompt_tokens", None), ("truncation_side", None), ("use_activation", False))
    assert plan(request(task="score", text_1=["q"], text_2="a")).items == (Item("q", "a"),)
    assert plan(request(task="score", queries=["q1", "q2"], documents=["a", "b"])).items == (Item("q1", "a"), Item("q2", "b"))


def test_score_with_mismatched_lengths_is_an_invalid_request():
    req = request(task="score", text_1=["q1", "q2"], text_2=["a", "b", "c"], metadata={"k": 1}, reply_to="r.t")
    with pytest.raises(InvalidRequest) as info:
        plan(req)
    err = info.value
    assert (err.error.type, err.error.param) == ("invalid_request", "text_2")
    assert (err.request_id, err.task, err.metadata, err.reply_to) == ("t-1", "score", {"k": 1}, "r.t")


def test_rerank_plans_a_pair_per_document():
    work = plan(request(task="rerank", query=QUERY, documents=DOCS, top_n=2))
    assert work.engine_call == "score"
    assert work.items == tuple(Item(QUERY, d) for d in DOCS)


def test_items_and_plans_are_hashable_cache_keys():
    items = [Item("12"), Item((12,)), Item("1", "2"), Item("12", ""), Item(("1", "2"))]  # type: ignore[arg-type]
    payloads = [json.dumps(i.key_payload(), sort_keys=True) for i in items]
    assert len(set(payloads)) == len(items)  # text, ids and pairs never collide
    assert len(set(items)) == len(items)
    assert json.loads(json.dumps(Item((1, 2)).key_payload())) == {"ids": [1, 2]}
    work = plan(request(task="embed", input=["a", "b"]))
    assert hash(work) == hash(plan(request(task="embed", input=["a", "b"])))


# ------------------------------------------------------------------------------------------------
# embed
# ------------------------------------------------------------------------------------------------
def test_embed_body_equals_engine_embed(engine):
    inputs = DOCS[:3]
    body, results = respond(engine, request(task="embed", input=inputs))
    expected = engine.embed(inputs, use_tqdm=False)
    assert body["object"] == "list" and body["model"] == engine.model_name
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in body["data"])
    for got, want in zip(body["data"], expected):
        assert plain(got["embedding"]) == plain(want.outputs.embedding)
    tokens = sum(o.num_prompt_tokens for o in expected)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert tokens == sum(r.num_tokens for r in results)


def test_embed_options_reach_the_engine(engine):
    ids = [[101, 7592, 2088, 102], [101, 2088, 7592, 2088, 102]]
    body, _ = respond(engine, request(task="embed", input=ids, dimensions=64, truncate_prompt_tokens=3))
    expected = engine.embed(ids, dimensions=64, truncate_prompt_tokens=3, use_tqdm=False)
    assert [len(d["embedding"]) for d in body["data"]] == [64, 64]
    assert [plain(d["embedding"]) for d in body["data"]] == [plain(o.outputs.embedding) for o in expected]
    assert body["usage"]["prompt_tokens"] == 6  # both truncated to 3 tokens


def test_embed_base64_decodes_to_the_float32_values(engine):
    body, _ = respond(engine, request(task="embed", input=DOCS[:2], encoding_format="base64"))
    expected = engine.embed(DOCS[:2], use_tqdm=False)
    for got, want in zip(body["data"], expected):
        assert isinstance(got["embedding"], str)
        assert decode_f32(got["embedding"]) == [struct.unpack("<f", struct.pack("<f", x))[0] for x in want.outputs.embedding]


def test_float32_base64_is_little_endian_and_flattens_rows():
    assert base64.b64decode(float32_base64([1.0, -2.0])) == bytes.fromhex("0000803f000000c0")
    assert decode_f32(float32_base64([[1.0, 2.0], [3.0, 4.5]])) == [1.0, 2.0, 3.0, 4.5]
    assert decode_f32(float32_base64(0.25)) == [0.25]


def test_float32_base64_of_arrays_matches_struct_packing():
    vector = np.array([0.1, -2.5, 3e-8], dtype=np.float32)
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    assert base64.b64decode(float32_base64(vector)) == struct.pack("<3f", *vector.tolist())
    assert base64.b64decode(float32_base64(matrix)) == struct.pack("<12f", *matrix.ravel().tolist())
    # other byte orders, float64 and strided views are converted, rows still flattened in order
    assert float32_base64(vector.astype(">f4")) == float32_base64(vector)
    assert decode_f32(float32_base64(matrix[:, ::2].astype(np.float64))) == [x for row in matrix[:, ::2].tolist() for x in row]


# ------------------------------------------------------------------------------------------------
# bodies from numpy results: same shape and key order as from lists, encoded natively
# ------------------------------------------------------------------------------------------------
def test_embed_body_from_arrays_encodes_to_the_same_json_as_from_lists():
    req = request(task="embed", input=["a", "b"])
    vectors = [np.array([0.5, -2.0], dtype=np.float32), np.array([0.25, 1.0], dtype=np.float32)]
    body = assemble(req, plan(req), [ItemResult(v, 3) for v in vectors], model="m")
    assert encode_message(body) == (
        b'{"id":"t-1","object":"list","model":"m","data":[{"object":"embedding","index":0,"embedding":[0.5,-2.0]},'
        b'{"object":"embedding","index":1,"embedding":[0.25,1.0]}],"usage":{"prompt_tokens":6,"total_tokens":6},"warnings":[]}'
    )
    from_lists = assemble(req, plan(req), [ItemResult(v.tolist(), 3) for v in vectors], model="m")
    assert encode_message(from_lists) == encode_message(body)


def test_token_matrix_from_an_array_is_rows_in_json_and_flattened_in_base64():
    matrix = np.array([[0.5, 1.5], [-1.0, 2.0], [0.0, 4.0]], dtype=np.float32)
    req = request(task="token_embed", input="a")
    body = assemble(req, plan(req), [ItemResult(matrix, 3)], model="m")
    # vLLM's token-embedding servers answer in the embeddings shape, the matrix as the embedding
    assert json.loads(encode_message(body))["data"] == [{"object": "embedding", "index": 0, "embedding": [[0.5, 1.5], [-1.0, 2.0], [0.0, 4.0]]}]
    req = request(task="token_embed", input="a", encoding_format="base64")
    body = assemble(req, plan(req), [ItemResult(matrix, 3)], model="m")
    assert decode_f32(body["data"][0]["embedding"]) == [0.5, 1.5, -1.0, 2.0, 0.0, 4.0]
    req = request(task="pooling", pooling_task="token_embed", input="a")  # /pooling keeps its own shape
    body = assemble(req, plan(req), [ItemResult(matrix, 3)], model="m")
    assert json.loads(encode_message(body))["data"] == [{"object": "pooling", "index": 0, "data": [[0.5, 1.5], [-1.0, 2.0], [0.0, 4.0]]}]


def test_classify_from_arrays_takes_the_first_best_label():
    req = request(task="classify", input=["a", "b"])
    results = [ItemResult(np.array([0.1, 0.45, 0.45], dtype=np.float32), 2), ItemResult(np.array([0.75, 0.25], dtype=np.float32), 1)]
    body = assemble(req, plan(req), results, model="m", id2label={0: "neg", 1: "pos"})
    assert [(d["index"], d["label"], d["num_classes"]) for d in body["data"]] == [(0, "pos", 3), (1, "neg", 2)]
    assert json.loads(encode_message(body))["data"][1] == {"index": 1, "label": "neg", "probs": [0.75, 0.25], "num_classes": 2}


@pytest.mark.parametrize("bad", [np.zeros((2, 3), dtype=np.float32), np.zeros(0, dtype=np.float32), [[0.5, 0.5]], [], 0.5])
def test_classify_refuses_what_is_not_a_probability_vector(bad):
    req = request(task="classify", input="a")
    with pytest.raises(TypeError):
        assemble(req, plan(req), [ItemResult(bad, 1)], model="m")


def test_scores_may_be_numpy_scalars_but_not_vectors():
    req = request(task="score", text_1="q", text_2=["a", "b"])
    body = assemble(req, plan(req), [ItemResult(np.float32(0.5), 2), ItemResult(0.25, 2)], model="m")
    assert [d["score"] for d in body["data"]] == [0.5, 0.25]
    assert all(type(d["score"]) is float for d in body["data"])
    with pytest.raises(TypeError):
        assemble(req, plan(req), [ItemResult(np.array([0.5], dtype=np.float32), 2), ItemResult(0.25, 2)], model="m")


# ------------------------------------------------------------------------------------------------
# token tasks and pooling
# ------------------------------------------------------------------------------------------------
def test_token_embed_body_equals_engine_encode(engine):
    body, results = respond(engine, request(task="token_embed", input=DOCS[:2]))
    expected = engine.encode(DOCS[:2], pooling_task="token_embed", use_tqdm=False)
    for got, want in zip(body["data"], expected):
        assert got["object"] == "embedding"
        assert plain(got["embedding"]) == plain(want.outputs.data)
        assert len(got["embedding"]) == want.num_prompt_tokens  # one row per token
    assert body["usage"]["prompt_tokens"] == sum(r.num_tokens for r in results) == sum(o.num_prompt_tokens for o in expected)


def test_token_embed_base64_is_the_flattened_matrix(engine):
    body, _ = respond(engine, request(task="token_embed", input=DOCS[0], encoding_format="base64"))
    matrix = engine.encode(DOCS[0], pooling_task="token_embed", use_tqdm=False)[0].outputs.data.tolist()
    flat = [x for row in matrix for x in row]
    assert close(decode_f32(body["data"][0]["embedding"]), flat)


def test_pooling_without_a_pooling_task_uses_the_model_default(engine):
    work = plan(request(task="pooling", input=[DOCS[1]]))
    results = run_plan(engine, work)
    body = assemble(request(task="pooling", input=[DOCS[1]]), work, results, model="m")
    assert engine.default_task == "embed"
    assert plain(body["data"][0]["data"]) == plain(engine.embed([DOCS[1]], use_tqdm=False)[0].outputs.embedding)


@pytest.mark.parametrize("task", ["token_classify", "reward"])
def test_token_classify_bodies_are_matrices(task):
    req = request(task=task, input=["a", "b"])
    work = plan(req)
    results = [ItemResult([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], 3), ItemResult([[1.0, 0.0]], 1)]
    body = assemble(req, work, results, model="m")
    assert body["data"] == [
        {"object": "pooling", "index": 0, "data": results[0].data},
        {"object": "pooling", "index": 1, "data": results[1].data},
    ]
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


# ------------------------------------------------------------------------------------------------
# classify
# ------------------------------------------------------------------------------------------------
def test_classify_body_matches_engine_classify(Engine, seq_cls_path):
    classifier = Engine(str(seq_cls_path))
    req = request(task="classify", input=DOCS)
    work = plan(req)
    id2label = classifier.model.config.id2label
    body = assemble(req, work, run_plan(classifier, work), model="cls", id2label=id2label)
    expected = classifier.classify(DOCS, use_tqdm=False)
    assert [d["index"] for d in body["data"]] == list(range(len(DOCS)))
    for got, want in zip(body["data"], expected):
        assert plain(got["probs"]) == plain(want.outputs.probs)
        assert got["label"] == want.outputs.label
        assert got["num_classes"] == 3
        assert got["label"] == id2label[max(range(3), key=got["probs"].__getitem__)]
    assert body["usage"]["prompt_tokens"] == sum(o.num_prompt_tokens for o in expected)


def test_classify_label_falls_back_to_the_class_index():
    req = request(task="classify", input=["a", "b"])
    results = [ItemResult([0.1, 0.7, 0.2], 5), ItemResult([0.6, 0.3, 0.1], 2)]
    body = assemble(req, plan(req), results, model="m")
    assert [(d["label"], d["num_classes"]) for d in body["data"]] == [("1", 3), ("0", 3)]
    body = assemble(req, plan(req), results, model="m", id2label={0: "neg"})
    assert [d["label"] for d in body["data"]] == ["1", "neg"]
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}


# ------------------------------------------------------------------------------------------------
# score and rerank
# ------------------------------------------------------------------------------------------------
def test_score_body_equals_engine_score(engine):
    body, results = respond(engine, request(task="score", text_1=QUERY, text_2=DOCS))
    expected = engine.score(QUERY, DOCS, use_tqdm=False)
    assert body["data"] == [{"object": "score", "index": i, "score": o.outputs.score} for i, o in enumerate(expected)]
    assert body["usage"]["prompt_tokens"] == sum(o.num_prompt_tokens for o in expected) == sum(r.num_tokens for r in results)


def test_score_n_vs_n_scores_each_pair(engine):
    firsts, seconds = DOCS[:2], DOCS[2:]
    body, _ = respond(engine, request(task="score", text_1=firsts, text_2=seconds))
    for i, (a, b) in enumerate(zip(firsts, seconds)):
        assert math.isclose(body["data"][i]["score"], engine.score(a, b, use_tqdm=False)[0].outputs.score, abs_tol=1e-6)


SCORES = [0.2, 0.9, -0.5, 0.9, 0.4]


def expected_ranking(scores: list[float], top_n: int) -> list[int]:
    """Best first; equal scores keep document order."""
    ranked: list[int] = []
    for i, s in enumerate(scores):
        at = next((k for k, j in enumerate(ranked) if scores[j] < s), len(ranked))
        ranked.insert(at, i)
    return ranked[:top_n or None]  # vLLM: 0 means all; more than the documents means all


@pytest.mark.parametrize("top_n", [0, 1, 3, 5, 7])
@pytest.mark.parametrize("return_documents", [True, False])
def test_rerank_sorts_cuts_and_echoes(top_n, return_documents):
    docs = [f"doc {i}" for i in range(len(SCORES))]
    req = request(task="rerank", query="q", documents=docs, top_n=top_n, return_documents=return_documents)
    work = plan(req)
    results = [ItemResult(s, 10 + i) for i, s in enumerate(SCORES)]
    body = assemble(req, work, results, model="m")
    order = expected_ranking(SCORES, top_n)
    assert [r["index"] for r in body["results"]] == order
    assert [r["relevance_score"] for r in body["results"]] == [SCORES[i] for i in order]
    for r in body["results"]:
        if return_documents:
            assert r["document"] == {"text": docs[r["index"]]}
        else:
            assert "document" not in r
    # usage counts every scored pair, not only the returned ones
    assert body["usage"] == {"prompt_tokens": sum(10 + i for i in range(5)), "total_tokens": sum(10 + i for i in range(5))}


def test_rerank_body_matches_engine_rerank(engine):
    body, _ = respond(engine, request(task="rerank", query=QUERY, documents=DOCS, top_n=3))
    expected = engine.rerank(QUERY, DOCS, top_n=3, use_tqdm=False)
    assert [(r["index"], r["document"]["text"]) for r in body["results"]] == [(e.index, e.document) for e in expected]
    for got, want in zip(body["results"], expected):
        assert math.isclose(got["relevance_score"], want.relevance_score, abs_tol=1e-6)
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)


# ------------------------------------------------------------------------------------------------
# run_plan / assemble contracts
# ------------------------------------------------------------------------------------------------
def test_run_plan_on_a_subset_of_items_matches_the_full_run(engine):
    work = plan(request(task="embed", input=DOCS))
    full = run_plan(engine, work)
    part = run_plan(engine, replace(work, items=work.items[2:]))
    assert [plain(r.data) for r in part] == [plain(r.data) for r in full[2:]]
    assert run_plan(engine, replace(work, items=())) == []


def test_assemble_refuses_a_result_count_mismatch():
    req = request(task="embed", input=["a", "b"])
    with pytest.raises(ValueError):
        assemble(req, plan(req), [ItemResult([0.0], 1)], model="m")


def test_plan_is_a_frozen_value():
    work = plan(request(task="embed", input="x"))
    assert isinstance(work, Plan)
    with pytest.raises(AttributeError):
        work.items = ()  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------
# vLLM request options that change the prompt: special tokens, padding, chat, per-side cuts
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm_reference(minilm_path):
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path)), AutoModel.from_pretrained(str(minilm_path)).eval()


def test_add_special_tokens_false_embeds_the_text_tokens_alone(engine, minilm_reference):
    from refs import minilm_embed

    tokenizer, model = minilm_reference
    body, results = respond(engine, request(task="embed", input=DOCS[0], add_special_tokens=False))
    ids = tokenizer(DOCS[0], add_special_tokens=False)["input_ids"]
    assert results[0].num_tokens == len(ids)
    assert close(plain(body["data"][0]["embedding"]), minilm_embed(model, ids).tolist(), 1e-5)


def test_padding_max_length_pads_with_the_pad_token_as_vllm_does(engine, minilm_reference):
    from refs import minilm_embed

    tokenizer, model = minilm_reference
    body, results = respond(engine, request(task="embed", input=DOCS[0], padding="max_length", truncate_prompt_tokens=32))
    ids = tokenizer(DOCS[0], padding="max_length", max_length=32)["input_ids"]
    assert len(ids) == 32 and results[0].num_tokens == 32
    assert close(plain(body["data"][0]["embedding"]), minilm_embed(model, ids).tolist(), 1e-5)


def test_chat_input_needs_a_chat_template(engine):
    from poolworker.engine.errors import InvalidInput
    from poolworker.tasks import Renderer

    with pytest.raises(InvalidInput) as caught:
        plan(request(task="embed", messages=[{"role": "user", "content": "hi"}]), Renderer(engine))
    assert caught.value.param == "messages"
    with pytest.raises(TypeError):  # a chat request cannot be planned without its model
        plan(request(task="embed", messages=[{"role": "user", "content": "hi"}]))


def test_max_tokens_per_side_cuts_texts_at_token_boundaries(engine, minilm_reference):
    from poolworker.tasks import Renderer

    tokenizer, _ = minilm_reference
    long = "Kafka consumer groups rebalance partitions whenever members join or leave the group."
    work = plan(request(task="rerank", query=long, documents=[long, "short"], max_tokens_per_query=3, max_tokens_per_doc=5),
                Renderer(engine))
    offsets = tokenizer(long, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert work.items == (Item(long[: offsets[2][1]], long[: offsets[4][1]]), Item(long[: offsets[2][1]], "short"))
    from poolworker.engine.errors import InvalidInput

    with pytest.raises(InvalidInput) as caught:
        plan(request(task="rerank", query="q", documents=["d"], max_tokens_per_doc=engine.max_model_len), Renderer(engine))
    assert caught.value.param == "max_tokens_per_doc"


@pytest.mark.parametrize("dtype, endianness, numpy_dtype", [("float32", "big", ">f4"), ("float16", "little", "<f2"),
                                                           ("float16", "big", ">f2"), ("float32", "native", "=f4")])
def test_to_bytes_is_numpys_cast_in_the_asked_byte_order(dtype, endianness, numpy_dtype):
    from poolworker.tasks import to_bytes

    matrix = np.array([[0.5, -1.25, 3.0], [1e-3, 7.5, -0.0]], dtype=np.float32)
    assert to_bytes(matrix, dtype, endianness) == matrix.astype(numpy_dtype).tobytes()


def test_bfloat16_bytes_are_the_high_half_of_float32_rounded():
    import torch

    from poolworker.tasks import to_bytes

    values = np.array([1.0, -2.5, 0.1, 3.14159], dtype=np.float32)
    raw = to_bytes(values, "bfloat16", "little")
    decoded = torch.from_numpy(np.frombuffer(raw, dtype="<u2").astype(np.int32) << 16).view(torch.float32).numpy()
    assert np.allclose(decoded, values, rtol=2**-8) and len(raw) == 2 * len(values)


def test_cohere_bit_packing_needs_a_dimension_divisible_by_8(engine):
    from poolworker.engine.errors import InvalidInput
    from poolworker.tasks import check_output, model_call

    for dims, fine in ((12, False), (16, True), (None, True)):  # MiniLM: 384 dimensions
        req = request(task="embed", texts=["a"], embedding_types=["float", "ubinary"], output_dimension=dims)
        call, _ = model_call(engine, plan(req))
        if fine:
            check_output(req, call)
            continue
        with pytest.raises(InvalidInput) as caught:
            check_output(req, call)
        assert caught.value.param == "embedding_types"
    float_only = request(task="embed", texts=["a"], output_dimension=12)
    check_output(float_only, model_call(engine, plan(float_only))[0])


def test_a_score_instruction_is_refused_where_a_score_template_would_need_it():
    from types import SimpleNamespace

    from poolworker.engine.errors import InvalidInput
    from poolworker.tasks import check_output

    templated = SimpleNamespace(mode="cross-encoder", engine=SimpleNamespace(score_template=object()))
    plain_model = SimpleNamespace(mode="cross-encoder", engine=SimpleNamespace(score_template=None))
    for field, value in (("instruction", "Judge relevance"), ("chat_template_kwargs", {"instruction": "x"})):
        req = request(task="rerank", query="q", documents=["d"], **{field: value})
        check_output(req, plain_model)  # no template: ignored, as vLLM ignores it
        with pytest.raises(InvalidInput) as caught:
            check_output(req, templated)
        assert caught.value.param == field
    check_output(request(task="rerank", query="q", documents=["d"]), templated)
