"""PyLate ColBERT checkpoints (issue 14): served as ``pylate.models.ColBERT.encode`` encodes them.

The reference is **real PyLate** (1.6.0, with the sentence-transformers 5.3 / transformers 5.3 it
needs, in a separate venv): ``tests/fixtures/pylate_reference.py`` built the checkpoints of
``tests/pylate_models.py`` and recorded ``encode(QUERIES, is_query=True)`` and
``encode(DOCUMENTS, is_query=False)`` (``pylate_reference.npz``) and the ids PyLate fed the model
(``pylate_reference.json``). The tests rebuild the same checkpoints (the weights' fingerprint
must match the recorded one) and compare: the ids exactly, every token vector within 1e-4 and
cosine >= 0.99999, through ``Engine`` batched and one text at a time and through the worker's
request path (parse → plan → tokenize → compute), both roles, on a packed (BERT) and a padded
transformers (ModernBERT) backbone, and MaxSim scores of those vectors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pylate_models as pm
import pytest
import torch
import torch.nn.functional as F
from refs import assert_clean_error

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "pylate_reference.json").read_text(encoding="utf-8"))
NAMES = sorted(REFERENCE["checkpoints"])
ATOL = 1e-4
COSINE = 0.99999
TEXTS = {"query": pm.QUERIES, "document": pm.DOCUMENTS}


@pytest.fixture(scope="module")
def vectors() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "pylate_reference.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            backbone, config = name.split("-", 1)
            path = pm.build_checkpoint(tmp_path_factory.mktemp(name), backbone, pm.CONFIGS[config])
            assert pm.weights_fingerprint(path) == REFERENCE["checkpoints"][name]["fingerprint"], \
                "the checkpoint recipe changed: rerun tests/fixtures/pylate_reference.py"
            made[name] = path
        return made[name]

    return get


@pytest.fixture(scope="module")
def engine(checkpoint):
    from poolworker import Engine

    made: dict = {}

    def get(name: str):
        if name not in made:
            made[name] = Engine(str(checkpoint(name)), device="cpu")
        return made[name]

    return get


def _expected(vectors, name: str, role: str) -> list[torch.Tensor]:
    return [torch.from_numpy(vectors[f"{name}/{role}/{i}"]) for i in range(len(TEXTS[role]))]


def _close(got, expected: torch.Tensor, what: str) -> None:
    got = torch.as_tensor(np.asarray(got, dtype=np.float32))
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != PyLate's {tuple(expected.shape)}"
    diff = (got - expected).abs().max().item()
    cos = F.cosine_similarity(got, expected, dim=-1).min().item()
    assert diff <= ATOL and cos >= COSINE, f"{what}: max diff {diff:.2e}, min cosine {cos:.6f}"


def _maxsim(q: torch.Tensor, d: torch.Tensor) -> float:
    return (q @ d.T).max(dim=1).values.sum().item()


@pytest.mark.parametrize("name", NAMES)
def test_token_vectors_match_pylate(name, engine, vectors):
    e = engine(name)
    assert e.supported_tasks == ("token_embed",) and e.score_mode == "late-interaction"
    for role, texts in TEXTS.items():
        assert e.tokenize(texts, pooling_task="token_embed", role=role) == REFERENCE["checkpoints"][name][role]
        expected = _expected(vectors, name, role)
        batched = e.encode(texts, pooling_task="token_embed", role=role, use_tqdm=False)
        for i, (text, out) in enumerate(zip(texts, batched)):
            _close(out.outputs.data, expected[i], f"{name} {role} batched {text[:15]!r}")
            alone = e.encode([text], pooling_task="token_embed", role=role, use_tqdm=False)[0]
            _close(alone.outputs.data, expected[i], f"{name} {role} alone {text[:15]!r}")


@pytest.mark.parametrize("name", ["bert-defaults", "modernbert-defaults", "bert-attended"])
def test_scores_are_maxsim_of_pylate_vectors(name, engine, vectors):
    e = engine(name)
    queries, docs = _expected(vectors, name, "query"), _expected(vectors, name, "document")
    for qi, query in enumerate(pm.QUERIES[:2]):
        expected = [_maxsim(queries[qi], d) for d in docs]
        got = [o.outputs.score for o in e.score(query, pm.DOCUMENTS, use_tqdm=False)]
        assert max(abs(a - b) for a, b in zip(got, expected)) <= ATOL * 10, (got, expected)
        ranked = e.rerank(query, pm.DOCUMENTS, use_tqdm=False)
        assert [r.index for r in ranked] == sorted(range(len(docs)), key=lambda j: -expected[j])


def test_a_text_used_as_query_and_document_gets_both_roles(engine, vectors):
    """The same text on both sides: the query keeps every vector, the document drops its
    skiplist vectors (on ``plain`` the ids agree, so only the role tells them apart)."""
    e = engine("bert-plain")
    text = pm.DOCUMENTS[3]
    query = e.encode([text], pooling_task="token_embed", role="query", use_tqdm=False)[0].outputs.data
    doc = _expected(vectors, "bert-plain", "document")[3]
    assert e.score(text, text, use_tqdm=False)[0].outputs.score == pytest.approx(_maxsim(query, doc), abs=ATOL)


def test_attending_to_the_expansion_tokens_would_differ(engine, vectors):
    """Negative control: with the expansion tokens attended (the forward of a model that does not
    know them), PyLate's default queries come out measurably different, so the key mask is what
    makes the vectors above match."""
    e = engine("bert-defaults")
    ids = e.tokenize(pm.QUERIES[:1], pooling_task="token_embed", role="query")
    packed = e.runner.forward(ids)  # every token attended
    wrong = e._token_outputs("token_embed", packed, e.check_options("token_embed"))[0]
    expected = _expected(vectors, "bert-defaults", "query")[0]
    assert wrong.shape == expected.shape and (wrong - expected).abs().max().item() > 1e-3


@pytest.mark.parametrize("name", ["bert-defaults", "modernbert-defaults"])
def test_worker_requests_carry_the_role(name, engine, vectors):
    """token_embed with Cohere's ``input_type`` and a rerank request, through the worker's
    protocol and task code (the receive side tokenizes with the role, the model side computes)."""
    from poolworker.protocol import parse_request
    from poolworker.tasks import assemble, model_call, plan, run_plan

    e = engine(name)
    for input_type, role in ((None, "query"), ("search_query", "query"), ("search_document", "document")):
        body = {"request_id": "p", "task": "token_embed", "input": TEXTS[role]}
        if input_type is not None:
            body["input_type"] = input_type
        request = parse_request(json.dumps(body).encode())
        assert not request.ignored
        work = plan(request)
        assert model_call(e, work)[0].role == role
        for i, result in enumerate(run_plan(e, work)):
            _close(result.data, _expected(vectors, name, role)[i], f"worker {input_type} [{i}]")
        assert result.num_tokens == len(REFERENCE["checkpoints"][name][role][-1])
    rerank = parse_request(json.dumps({"request_id": "r", "task": "rerank", "query": pm.QUERIES[0],
                                       "documents": pm.DOCUMENTS}).encode())
    work = plan(rerank)
    body = assemble(rerank, work, run_plan(e, work), model="m")
    queries, docs = _expected(vectors, name, "query"), _expected(vectors, name, "document")
    scores = {r["index"]: r["relevance_score"] for r in body["results"]}
    assert all(abs(scores[j] - _maxsim(queries[0], d)) <= ATOL * 10 for j, d in enumerate(docs))


def test_request_options_pylate_cannot_take(engine):
    from poolworker.engine.errors import EngineError, InvalidInput, UnsupportedTask
    from poolworker.protocol import parse_request
    from poolworker.tasks import plan, run_plan

    e = engine("bert-defaults")

    def outcome(**fields) -> EngineError:
        body = {"request_id": "x", "task": "token_embed", "input": ["a text"], **fields}
        with pytest.raises(EngineError) as err:
            run_plan(e, plan(parse_request(json.dumps(body).encode())))
        return err.value

    assert outcome(input_type="classification").param == "input_type"
    for field, value in (("truncate_prompt_tokens", 8), ("truncation_side", "left"), ("padding", "max_length"),
                         ("add_special_tokens", False)):
        err = outcome(**{field: value})
        assert isinstance(err, InvalidInput) and err.param == field, (field, err)
    assert outcome(input=[[101, 2054, 102]]).param == "input[0]"  # token ids: PyLate takes text
    with pytest.raises(UnsupportedTask):
        e.encode(["a"], pooling_task="embed")
    with pytest.raises(UnsupportedTask):
        e.encode_multi(["a"], pooling_tasks=["token_embed"])
    assert e.describe()["pylate"][0].startswith("a text without a role is a query")


def test_input_type_on_a_model_without_roles(colbert_path):
    from poolworker import Engine
    from poolworker.engine.errors import InvalidInput
    from poolworker.protocol import parse_request
    from poolworker.tasks import plan, run_plan

    request = parse_request(json.dumps({"request_id": "x", "task": "token_embed", "input": "a",
                                        "input_type": "search_query"}).encode())
    with pytest.raises(InvalidInput) as err:
        run_plan(Engine(str(colbert_path), device="cpu"), plan(request))
    assert err.value.param == "input_type"


@pytest.mark.parametrize(("change", "needles"), [
    ({"query_prefix": "[QUERY] "}, ["query_prefix '[QUERY] '", "not one token"]),
    ({"default_prompt_name": "query", "prompts": {"query": "query: "}}, ["default_prompt_name"]),
    ({"query_length": 600}, ["query_length=600", "max_model_len=512"]),
])
def test_configs_the_engine_cannot_reproduce_are_refused(change, needles, tmp_path):
    from poolworker import Engine

    path = pm.build_checkpoint(tmp_path / "m", "bert", change)
    assert_clean_error(lambda: Engine(str(path), device="cpu"), "PyLate", *needles)


def test_a_checkpoint_without_dense_is_refused(tmp_path):
    from poolworker import Engine

    path = pm.build_checkpoint(tmp_path / "m", "bert", {"query_length": 32})  # PyLate's save writes every key
    (path / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "",
                                                    "type": "sentence_transformers.models.Transformer"}]))
    assert_clean_error(lambda: Engine(str(path), device="cpu"), "PyLate", "no Dense module")


def test_documents_are_cut_at_document_length_not_at_the_saved_max_seq_length(checkpoint, engine, tmp_path):
    """PyLate sets the Transformer's max_seq_length to the role's length before every tokenize, so
    the saved ``sentence_bert_config.json`` value (``ColBERT.save`` leaves the last role's length
    minus one: 299 on GTE-ModernColBERT-v1 for document_length 300) bounds nothing. A document
    past it is served as on the same weights saved with a larger value, not refused."""
    import shutil

    from poolworker import Engine

    path = tmp_path / "m"
    shutil.copytree(checkpoint("bert-defaults"), path)
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 60, "do_lower_case": False}))
    short = Engine(str(path), device="cpu")
    text = "word " * 150  # 153 tokens with the marker: under document_length=180, over 60
    got = short.encode([text], pooling_task="token_embed", role="document", use_tqdm=False)[0].outputs.data
    expected = engine("bert-defaults").encode([text], pooling_task="token_embed", role="document", use_tqdm=False)[0].outputs.data
    assert got.shape == expected.shape == (153, pm.DIM)
    assert torch.allclose(got, expected, atol=ATOL)


@pytest.mark.parametrize("change", [{}, {"attend_to_expansion_tokens": True}, {"do_query_expansion": False}])
def test_a_tokenizer_padding_on_the_left_is_refused(change, tmp_path):
    """PyLate pads on the tokenizer's side and then inserts the marker after the first token: on
    the left, a query's expansion tokens (and a shorter document's batch padding) come before
    its text and the marker lands after the first padding token, which the engine does not do."""
    from poolworker import Engine

    path = pm.build_checkpoint(tmp_path / "m", "bert", change)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    assert_clean_error(lambda: Engine(str(path), device="cpu"), "PyLate", "pads on the left")
