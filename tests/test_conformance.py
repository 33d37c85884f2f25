"""vLLM contract conformance: request bodies taken from vLLM 0.33's own tests, replayed
through a real broker (Tansu) and one real worker serving stand-in models of the same kinds.

``tests/conformance/vllm_bodies.json`` holds the bodies, each citing the vLLM file it came
from, and what vLLM answers: a body, or a 400-class error (its type and the field it names).
Every answer is checked for vLLM's response shape and, for answers, its values against
references computed here from the same weights with transformers / sentence-transformers /
numpy, never against the worker's own code. One worker, every body in one go: the whole file
is a single produce and a single read.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from builders import colbert_dense_weight, decoder
from refs import bert_hidden, decoder_hidden_single, mean_pool
from streaming import RunningWorker, produce, read_topic, worker_settings

from poolworker.cache import make_cache
from poolworker.metrics import Metrics
from poolworker.worker import Worker

CASES = json.loads((Path(__file__).parent / "conformance" / "vllm_bodies.json").read_text())["cases"]
# vLLM's embed test model is served with this template (DUMMY_CHAT_TEMPLATE in
# tests/entrypoints/pooling/embed/test_online.py); our decoder stand-ins carry it in their tokenizer.
CHAT_TEMPLATE = "{% for message in messages %}{{message['role'] + ': ' + message['content'] + '\\n'}}{% endfor %}"
PROMPTS = {"query": "query: ", "passage": "passage: "}
ATOL = 2e-4
# How far a value may move when cast to each embed_dtype (relative, absolute).
DTYPE_TOL = {"float32": (1e-6, ATOL), "float16": (1e-3, ATOL), "bfloat16": (8e-3, ATOL), "fp8_e4m3": (0.07, 2e-3),
             "fp8_e5m2": (0.13, 2e-3)}
TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
               "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


# ------------------------------------------------------------------------------------------------
# Stand-in models and their references
# ------------------------------------------------------------------------------------------------
def _with_template(path: Path) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def paths(tmp_path_factory, minilm_path, cross_encoder_path, colbert_path, token_cls_path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("conformance")
    prompts = root / "minilm-prompts"
    shutil.copytree(minilm_path, prompts)
    (prompts / "config_sentence_transformers.json").write_text(json.dumps({"prompts": PROMPTS}))
    return {
        "minilm": minilm_path,
        "minilm-prompts": prompts,
        "chat": _with_template(decoder(root / "chat")),
        "apeach": _with_template(decoder(root / "apeach", head="seq_cls", num_labels=2)),
        "reranker": cross_encoder_path,
        "colbert": colbert_path,
        "tokcls": token_cls_path,
    }


class References:
    """Expected outputs from transformers / sentence-transformers on the stand-ins' weights."""

    def __init__(self, paths: dict[str, Path]) -> None:
        from sentence_transformers import SentenceTransformer
        from transformers import (
            AutoModel,
            AutoModelForSequenceClassification,
            AutoModelForTokenClassification,
            AutoTokenizer,
        )

        self.paths = paths
        self.tokenizers = {name: AutoTokenizer.from_pretrained(str(p)) for name, p in paths.items()}
        self.st = {name: SentenceTransformer(str(paths[name]), device="cpu") for name in ("minilm", "minilm-prompts")}
        self.bert = AutoModel.from_pretrained(str(paths["minilm"])).eval()
        self.chat = AutoModel.from_pretrained(str(paths["chat"])).eval()
        self.apeach = AutoModelForSequenceClassification.from_pretrained(str(paths["apeach"])).eval()
        self.reranker = AutoModelForSequenceClassification.from_pretrained(str(paths["reranker"])).eval()
        self.colbert = AutoModel.from_pretrained(str(paths["colbert"])).eval()
        self.colbert_weight = colbert_dense_weight(paths["colbert"])
        self.tokcls = AutoModelForTokenClassification.from_pretrained(str(paths["tokcls"])).eval()

    def ids(self, model: str, body: dict) -> list[list[int]]:
        """The token ids vLLM feeds the model for the body's input (text, ids or chat)."""
        tok = self.tokenizers[model]
        if "messages" in body or (isinstance(body.get("input"), list) and body["input"] and isinstance(body["input"][0], (dict, list))
                                  and not isinstance(body["input"][0], int)):
            conversations = body.get("messages") or body["input"]
            conversations = conversations if isinstance(conversations[0], list) else [conversations]
            texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=body.get("add_generation_prompt", False),
                                             continue_final_message=body.get("continue_final_message", False))
                     for c in conversations]
            return [tok(t, add_special_tokens=body.get("add_special_tokens", False))["input_ids"] for t in texts]
        if "inputs" in body:  # Cohere content lists: one user message each, text parts joined by newlines
            texts = [tok.apply_chat_template([{"role": "user", "content": "\n".join(p["text"] for p in item["content"])}],
                                             tokenize=False) for item in body["inputs"]]
            return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        prompts = body["input"] if "input" in body else body["texts"]
        if isinstance(prompts, list) and prompts and isinstance(prompts[0], int):
            return [prompts]
        prompts = [prompts] if isinstance(prompts, (str, int)) else prompts
        if body.get("input_type"):
            prompts = [PROMPTS[body["input_type"]] + p for p in prompts]
        out = []
        for p in prompts:
            if not isinstance(p, str):
                out.append(p)
                continue
            truncate = body.get("truncate_prompt_tokens")
            side = "left" if body.get("truncate") == "START" else "right"
            if "texts" in body and body.get("truncate", "END") != "NONE":  # Cohere: cut at max_tokens, else the maximum
                truncate = body.get("max_tokens", -1)
            limit = {"minilm": 256, "minilm-prompts": 256, "colbert": 256}.get(model, 512) if truncate == -1 else truncate
            tok.truncation_side = side
            out.append(tok(p, add_special_tokens=body.get("add_special_tokens", True), truncation=limit is not None,
                           max_length=limit)["input_ids"])
        return out

    @torch.no_grad()
    def vectors(self, model: str, body: dict, pooling_task: str) -> list[np.ndarray]:
        ids = self.ids(model, body)
        if model in ("minilm", "minilm-prompts"):
            if "texts" not in body and "input_type" not in body and all(isinstance(p, str) for p in _listed(body.get("input"))) \
                    and body.get("use_activation") is not False:
                return list(self.st[model].encode(_listed(body["input"]), convert_to_numpy=True))
            rows = [mean_pool(self.bert, x) for x in ids]
            return [(F.normalize(r, dim=-1) if body.get("use_activation") is not False else r).numpy() for r in rows]
        if model == "chat":
            return [F.normalize(decoder_hidden_single(self.chat, x)[-1], dim=-1).numpy() for x in ids]
        if model == "apeach":
            return [torch.softmax(self.apeach(input_ids=torch.tensor([x])).logits[0].float(), -1).numpy() for x in ids]
        if model == "colbert":
            return [F.normalize(bert_hidden(self.colbert, x) @ self.colbert_weight.T, dim=-1).numpy() for x in ids]
        if model == "tokcls":
            return [torch.softmax(self.tokcls(input_ids=torch.tensor([x])).logits[0].float(), -1).numpy() for x in ids]
        raise AssertionError(f"no reference for {model}")

    @torch.no_grad()
    def scores(self, pairs: list[tuple[str, str]], activation: bool = True) -> list[float]:
        tok = self.tokenizers["reranker"]
        out = []
        for q, d in pairs:
            encoded = tok(q, d, return_tensors="pt")
            logit = self.reranker(**encoded).logits[0, 0].float()
            out.append(float(torch.sigmoid(logit) if activation else logit))
        return out

    def cut(self, text: str, max_tokens: int) -> str:
        """The first ``max_tokens`` content tokens of ``text``, cut at the last one's end."""
        offsets = self.tokenizers["reranker"](text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]]


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


# ------------------------------------------------------------------------------------------------
# One worker, every body
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def replies(broker, paths, Engine):
    """Every case's result record, by case id (the request id), from one worker."""
    engines = {name: Engine(str(path)) for name, path in paths.items()}
    refs_tokenizers = {name: engines[name].tokenizer.tokenizer for name in engines}
    settings = worker_settings(broker)
    metrics = Metrics()
    worker = Worker(settings, engines=engines, cache=make_cache(None), metrics=metrics)
    running = RunningWorker(worker).start()
    try:
        messages = []
        for case in CASES:
            body = {**case["body"], "request_id": case["id"], "task": case["task"], "model": case["model"]}
            if isinstance(body.get("input"), str) and body["input"].startswith("TOKEN_IDS("):
                body["input"] = refs_tokenizers[case["model"]](body["input"][len("TOKEN_IDS("):-1])["input_ids"]
                case["body"] = {**case["body"], "input": body["input"]}
            messages.append((case["id"].encode(), json.dumps(body).encode()))
        produce(broker.bootstrap_servers, settings.requests_topic, messages)
        records = read_topic(broker.bootstrap_servers, settings.results_topic, len(CASES), timeout_s=120)
    finally:
        running.stop()
    by_id = {dict(r.headers)["request_id"].decode(): r for r in records}
    assert len(by_id) == len(CASES), sorted({c["id"] for c in CASES} - set(by_id))
    return by_id


@pytest.fixture(scope="module")
def refs(paths) -> References:
    return References(paths)


def _json(record) -> dict:
    return json.loads(record.value)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_vllm_body_is_answered_as_vllm_answers_it(case, replies, refs):
    record = replies[case["id"]]
    headers = {k: v for k, v in record.headers}
    if "error" in case:
        message = _json(record)
        assert headers["status"] == b"error", message
        assert (message["error"]["type"], message["error"]["param"]) == (case["error"], case["param"]), message["error"]
        return
    assert headers["status"] == b"ok", record.value[:300]
    CHECKS[case["check"]](case, record, headers, refs)


# ------------------------------------------------------------------------------------------------
# Shape and value checks, one per vLLM response type
# ------------------------------------------------------------------------------------------------
def _close(got, want, what: str, rtol: float = 0.0, atol: float = ATOL) -> None:
    got, want = np.asarray(got, dtype=np.float32), np.asarray(want, dtype=np.float32)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.allclose(got, want, rtol=rtol, atol=atol), f"{what}: max diff {np.abs(got - want).max()}"


def _decode(raw: bytes, dtype: str, endianness: str, shape) -> np.ndarray:
    """vLLM's binary2tensor, in numpy + torch: view the bytes, swap, reinterpret."""
    width = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float16}.get(dtype, np.uint8)
    array = np.frombuffer(raw, dtype=width).copy()
    if endianness not in ("native", sys.byteorder):
        array = array.byteswap()
    return torch.from_numpy(array).view(TORCH_DTYPE[dtype]).float().numpy().reshape(shape)


def _usage(message: dict, ids: list[list[int]]) -> None:
    tokens = sum(len(x) for x in ids)
    assert message["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def _encoding(body: dict) -> tuple[str, str, str]:
    return body.get("encoding_format", "float"), body.get("embed_dtype", "float32"), body.get("endianness", "native")


def _check_binary(case, record, headers, refs, want: list[np.ndarray]) -> None:
    """A bytes/bytes_only result: raw arrays in the value, vLLM's metadata in a header."""
    fmt, dtype, end = _encoding(case["body"])
    assert headers["content-type"] == b"application/octet-stream" and headers["encoding_format"] == fmt.encode()
    if fmt == "bytes_only":
        assert "metadata" not in headers
        step = len(record.value) // len(want)  # equal shapes in these cases; bytes_only says nothing more
        items = [{"start": i * step, "end": (i + 1) * step, "shape": list(w.shape)} for i, w in enumerate(want)]
    else:
        meta = json.loads(headers["metadata"])
        assert meta["request_id"] == case["id"] and meta["model"] == case["model"] and meta["warnings"] == []
        _usage(meta, refs.ids(case["model"], case["body"]))
        items = meta["data"]
        assert [(m["index"], m["embed_dtype"], m["endianness"], m["shape"]) for m in items] == \
            [(i, dtype, end, list(w.shape)) for i, w in enumerate(want)]
        assert items[-1]["end"] == len(record.value)
    rtol, atol = DTYPE_TOL[dtype]
    for item, w in zip(items, want):
        _close(_decode(record.value[item["start"]:item["end"]], dtype, end, item["shape"]), w, case["id"], rtol, atol)


def _check_vectors(case, record, headers, refs, pooling_task: str, obj: str, key: str) -> None:
    """Vectors or matrices in a list body (``data[i][key]``, ``object`` ``obj``) in any
    encoding, against the reference."""
    body = case["body"]
    want = refs.vectors(case["model"], body, pooling_task)
    fmt, dtype, end = _encoding(body)
    if fmt in ("bytes", "bytes_only"):
        _check_binary(case, record, headers, refs, want)
        return
    message = _json(record)
    assert (message["object"], message["model"], message["id"]) == ("list", case["model"], case["id"])
    assert [(d["object"], d["index"]) for d in message["data"]] == [(obj, i) for i in range(len(want))]
    rtol, atol = DTYPE_TOL[dtype]
    for d, w in zip(message["data"], want):
        got = _decode(base64.b64decode(d[key]), dtype, end, w.shape) if fmt == "base64" else d[key]
        _close(got, w, case["id"], rtol, atol)
    _usage(message, refs.ids(case["model"], body))
    assert [w.split("'")[1] for w in message["warnings"]] == case.get("warnings", [])


def check_embed(case, record, headers, refs) -> None:
    _check_vectors(case, record, headers, refs, "embed", "embedding", "embedding")


def check_token_embed(case, record, headers, refs) -> None:
    """vLLM's token-embedding servers answer in the embeddings shape, a matrix per input."""
    _check_vectors(case, record, headers, refs, "token_embed", "embedding", "embedding")


def check_pooling(case, record, headers, refs) -> None:
    _check_vectors(case, record, headers, refs, case["body"]["pooling_task"], "pooling", "data")


def check_classify(case, record, headers, refs) -> None:
    message = _json(record)
    want = refs.vectors(case["model"], case["body"], "classify")
    assert message["object"] == "list" and len(message["data"]) == len(want)
    for i, (d, w) in enumerate(zip(message["data"], want)):
        assert d["index"] == i and d["num_classes"] == len(w) == len(d["probs"])
        _close(d["probs"], w, case["id"])
        assert d["label"] == f"LABEL_{int(np.argmax(w))}"
    _usage(message, refs.ids(case["model"], case["body"]))
    if "prompt_tokens" in case:
        assert message["usage"]["prompt_tokens"] == case["prompt_tokens"]


def _score_pairs(body: dict) -> list[tuple[str, str]]:
    for a, b in (("text_1", "text_2"), ("queries", "documents"), ("queries", "items"), ("data_1", "data_2")):
        if a in body and b in body:
            first, second = _listed(body[a]), _listed(body[b])
            return [(first[0], s) for s in second] if len(first) == 1 else list(zip(first, second))
    raise AssertionError(body)


def check_score(case, record, headers, refs) -> None:
    message = _json(record)
    want = refs.scores(_score_pairs(case["body"]))
    assert message["object"] == "list" and [d["object"] for d in message["data"]] == ["score"] * len(want)
    assert [d["index"] for d in message["data"]] == list(range(len(want)))
    _close([d["score"] for d in message["data"]], want, case["id"])


def check_rerank(case, record, headers, refs) -> None:
    message = _json(record)
    body = case["body"]
    per_doc = body.get("max_tokens_per_doc", 0)
    docs = [refs.cut(d, per_doc) if per_doc else d for d in body["documents"]]
    want = refs.scores([(body["query"], d) for d in docs], activation=body.get("use_activation", True))
    order = sorted(range(len(want)), key=lambda i: -want[i])[: body.get("top_n") or None]
    assert message["id"] == case["id"] and message["model"] == case["model"]
    assert [r["index"] for r in message["results"]] == order
    _close([r["relevance_score"] for r in message["results"]], [want[i] for i in order], case["id"])
    assert [r["document"]["text"] for r in message["results"]] == [body["documents"][i] for i in order]
    tokens = sum(len(refs.tokenizers["reranker"](body["query"], d)["input_ids"]) for d in docs)
    assert message["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def check_cohere(case, record, headers, refs) -> None:
    message = _json(record)
    body = case["body"]
    want = np.stack(refs.vectors(case["model"], body, "embed"))
    types = body.get("embedding_types") or ["float"]
    assert message["id"] == case["id"] and message["response_type"] == "embeddings_by_type"
    assert message.get("texts") == body.get("texts") and set(message["embeddings"]) == set(types)
    tokens = sum(len(x) for x in refs.ids(case["model"], body))
    assert message["meta"] == {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens, "image_tokens": 0}}
    embeddings = message["embeddings"]
    if "float" in types:
        _close(embeddings["float"], want, case["id"])
    bits = np.packbits(want >= 0, axis=-1)  # Cohere: one bit per dimension, high bit first
    if "ubinary" in types:
        assert embeddings["ubinary"] == bits.tolist()
    if "binary" in types:
        assert embeddings["binary"] == (bits.astype(np.int16) - 128).tolist()
    if "base64" in types:
        _close([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in embeddings["base64"]], want, case["id"])


CHECKS = {"embed": check_embed, "classify": check_classify, "pooling": check_pooling, "token_embed": check_token_embed,
          "score": check_score, "rerank": check_rerank, "cohere": check_cohere}


def test_every_case_cites_a_vllm_source_and_has_a_check():
    for case in CASES:
        assert case["source"].startswith("vllm-0.33.0/") and case["id"] and case["task"]
        assert ("error" in case) != (case["check"] in CHECKS), case["id"]
    assert len({c["id"] for c in CASES}) == len(CASES)
