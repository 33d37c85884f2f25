"""Rerankers made from generative models (issue 14, item 3): a ``*ForCausalLM`` checkpoint served
with vLLM-style ``hf_overrides`` scores a (query, document) pair from its LM head's "no" / "yes"
logits at the last token.

The reference is the Qwen3-Reranker model card's computation done by hand with transformers'
``*ForCausalLM`` on the same weights: the prompt built from the card's prefix / instruction /
suffix strings (tokenized piece by piece and concatenated, as the card does), the full LM logits
of the last token, ``log_softmax`` over [no, yes], ``exp`` of the "yes" entry. Nothing here comes
from the code under test. Checkpoints are tiny random Qwen3 / Qwen2 / Llama models whose
tokenizer has "no" and "yes" as single tokens.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from fidelity_models import FAMILIES, build, word_tokenizer
from refs import as_tensor, assert_clean_error

ATOL = 1e-4
QWEN3_RERANKER = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}
QUERY = "what is kafka"
DOCS = ["Kafka is a distributed log.", "A recipe for bread with yes and no.", "no", "Kafka carries the requests " * 4]

# The Qwen3-Reranker model card's prompt pieces.
CARD_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
CARD_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def card_pair(query: str, doc: str) -> str:
    return f"<Instruct>: {CARD_INSTRUCTION}\n<Query>: {query}\n<Document>: {doc}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory):
    built: dict[tuple[str, bool], Path] = {}

    def get(name: str, tied: bool = False) -> Path:
        if (name, tied) not in built:
            out = tmp_path_factory.mktemp(f"{name}-causal-{tied}")
            built[name, tied] = build(FAMILIES[name], "causal_lm", out, tokenizer=word_tokenizer(("no", "yes")),
                                      tie_word_embeddings=tied)
        return built[name, tied]

    return get


def _reference(path: Path, name: str):
    """(last-token LM logits of ``ids``, tokenizer): transformers' ForCausalLM, one sequence alone."""
    from transformers import AutoTokenizer

    model = FAMILIES[name].cls("causal_lm").from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))

    @torch.no_grad()
    def last_logits(ids: list[int]) -> torch.Tensor:
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()

    return last_logits, tok


def _card_scores(path: Path, name: str, query: str, docs: list[str]) -> torch.Tensor:
    last_logits, tok = _reference(path, name)
    no, yes = tok.convert_tokens_to_ids("no"), tok.convert_tokens_to_ids("yes")
    prefix, suffix = tok(CARD_PREFIX)["input_ids"], tok(CARD_SUFFIX)["input_ids"]
    scores = []
    for doc in docs:
        logits = last_logits(prefix + tok(card_pair(query, doc))["input_ids"] + suffix)
        scores.append(torch.log_softmax(logits[[no, yes]], dim=-1)[1].exp())
    return torch.stack(scores)


@pytest.mark.parametrize(("name", "tied"), [("qwen3", False), ("qwen3", True), ("qwen2", False), ("llama", False)])
def test_scores_match_the_model_card_computation(name, tied, causal_lm, Engine):
    path = causal_lm(name, tied)
    arch = {"qwen3": "Qwen3", "qwen2": "Qwen2", "llama": "Llama"}[name] + "ForSequenceClassification"
    engine = Engine(str(path), device="cpu", hf_overrides={**QWEN3_RERANKER, "architectures": [arch]})
    expected = _card_scores(path, name, QUERY, DOCS)
    info = engine.describe()
    assert info["score_mode"] == "cross-encoder" and info["score_template"] == "qwen3-reranker"
    assert "'yes'" in info["head"] and info["head_path"] == "pooled-rows" and info["hf_overrides"]["architectures"] == [arch]
    got = torch.tensor([o.outputs.score for o in engine.score(QUERY, DOCS, use_tqdm=False)])
    assert (got - expected).abs().max().item() <= ATOL, (got, expected)
    alone = torch.tensor([engine.score(QUERY, d, use_tqdm=False)[0].outputs.score for d in DOCS])
    assert (alone - expected).abs().max().item() <= ATOL
    ranked = engine.rerank(QUERY, DOCS, use_tqdm=False)
    assert [r.index for r in ranked] == torch.argsort(expected, descending=True).tolist()


def test_classify_is_the_yes_minus_no_logit_at_the_last_token(causal_lm, Engine):
    """Plain prompts (no template): the raw output is logit[yes] - logit[no] of the last token,
    batched and one by one; the probability is its sigmoid."""
    path = causal_lm("qwen3")
    engine = Engine(str(path), device="cpu", hf_overrides=QWEN3_RERANKER)
    last_logits, tok = _reference(path, "qwen3")
    no, yes = tok.convert_tokens_to_ids("no"), tok.convert_tokens_to_ids("yes")
    logits = [last_logits(tok(t)["input_ids"]) for t in DOCS]
    expected = torch.stack([x[yes] - x[no] for x in logits])
    raw = torch.stack([as_tensor(o.outputs.data)[0] for o in engine.encode(DOCS, pooling_task="classify", use_activation=False, use_tqdm=False)])
    assert (raw - expected).abs().max().item() <= ATOL
    probs = torch.tensor([engine.classify([t], use_tqdm=False)[0].outputs.probs[0] for t in DOCS])
    assert (probs - torch.sigmoid(expected)).abs().max().item() <= ATOL


def test_templated_prompts_are_never_truncated(causal_lm, Engine):
    """Truncating a rendered prompt would cut the turn the score is read after: an error instead."""
    from poolworker.engine.errors import InputTooLong

    engine = Engine(str(causal_lm("qwen3")), device="cpu", hf_overrides=QWEN3_RERANKER)
    full = engine.score(QUERY, DOCS[0], use_tqdm=False)[0]
    assert engine.score(QUERY, DOCS[0], truncate_prompt_tokens=-1, use_tqdm=False)[0].outputs.score == full.outputs.score
    assert_clean_error(lambda: engine.score(QUERY, DOCS[0], truncate_prompt_tokens=len(full.prompt_token_ids) - 1),
                       "not truncated", types=(InputTooLong,))
    padded = dataclasses.replace(engine.truncation(None, None), pad_to=engine.max_model_len)
    assert_clean_error(lambda: engine.tokenize_pairs_each([QUERY], [DOCS[0]], ["pair[0]"], truncation=padded), "padding")


def test_no_post_processing_gives_the_token_logits(causal_lm, Engine):
    path = causal_lm("qwen2")
    overrides = {"architectures": ["Qwen2ForSequenceClassification"], "classifier_from_token": ["no", "yes"],
                 "method": "no_post_processing"}
    engine = Engine(str(path), device="cpu", hf_overrides=overrides)
    last_logits, tok = _reference(path, "qwen2")
    ids = [tok.convert_tokens_to_ids("no"), tok.convert_tokens_to_ids("yes")]
    expected = torch.stack([last_logits(tok(t)["input_ids"])[ids] for t in DOCS])
    raw = torch.stack([as_tensor(o.outputs.data) for o in engine.encode(DOCS, pooling_task="classify", use_activation=False, use_tqdm=False)])
    assert (raw - expected).abs().max().item() <= ATOL
    assert engine.classify(DOCS[:1], use_tqdm=False)[0].outputs.label in ("no", "yes")


def test_a_custom_score_template_file(causal_lm, Engine, tmp_path):
    path = causal_lm("qwen3")
    template = tmp_path / "t.jinja"
    template.write_text("Q={{ messages[0].content }} D={{ messages[1].content }}")
    engine = Engine(str(path), device="cpu", hf_overrides=QWEN3_RERANKER, score_template=str(template))
    last_logits, tok = _reference(path, "qwen3")
    no, yes = tok.convert_tokens_to_ids("no"), tok.convert_tokens_to_ids("yes")
    logits = last_logits(tok(f"Q={QUERY} D={DOCS[0]}")["input_ids"])
    assert abs(engine.score(QUERY, DOCS[0], use_tqdm=False)[0].outputs.score - torch.sigmoid(logits[yes] - logits[no]).item()) <= ATOL
    default = Engine(str(path), device="cpu", hf_overrides=QWEN3_RERANKER)
    assert engine.describe()["fingerprint"] != default.describe()["fingerprint"], "cached scores of another template would be reused"


def test_a_model_spec_file_carries_the_overrides(causal_lm, Engine, tmp_path):
    """The worker's --model NAME=PATH can name a spec file: model + hf_overrides + score template."""
    import json

    path = causal_lm("qwen3")
    (tmp_path / "t.jinja").write_text("{{ query }}|{{ document }}")
    spec = tmp_path / "rr.json"
    spec.write_text(json.dumps({"model": str(path), "hf_overrides": QWEN3_RERANKER, "score_template": "t.jinja"}))
    from_spec = Engine(str(spec), device="cpu")
    direct = Engine(str(path), device="cpu", hf_overrides=QWEN3_RERANKER, score_template=str(tmp_path / "t.jinja"))
    assert from_spec.describe()["fingerprint"] == direct.describe()["fingerprint"]
    assert from_spec.score(QUERY, DOCS[0], use_tqdm=False)[0].outputs.score == direct.score(QUERY, DOCS[0], use_tqdm=False)[0].outputs.score
    spec.write_text(json.dumps({"model": str(path), "hf_override": QWEN3_RERANKER}))
    assert_clean_error(lambda: Engine(str(spec), device="cpu"), "unknown keys", "hf_override")
    spec.write_text(json.dumps({"model": str(path), "hf_overrides": QWEN3_RERANKER}))
    assert_clean_error(lambda: Engine(str(spec), device="cpu", hf_overrides=QWEN3_RERANKER), "both")


@pytest.mark.parametrize("how", ["spec file", "flag"])
def test_the_worker_serves_a_rerank_request_with_overrides(how, causal_lm, tmp_path):
    """--model NAME=spec.json, or --model NAME=PATH with --hf-overrides NAME=JSON, through the
    worker's own loading and task code (plan → the engine calls on token ids → the vLLM rerank
    body) gives the model card's scores."""
    import json

    from poolworker.config import WorkerSettings
    from poolworker.protocol import parse_request
    from poolworker.tasks import assemble, plan, run_plan
    from poolworker.worker import load_engines

    path = causal_lm("qwen3")
    if how == "flag":
        settings = WorkerSettings(models=[f"rr={path}"], hf_overrides=[f"rr={json.dumps(QWEN3_RERANKER)}"], device="cpu")
    else:
        spec = tmp_path / "rr.json"
        spec.write_text(json.dumps({"model": str(path), "hf_overrides": QWEN3_RERANKER}))
        settings = WorkerSettings(models=[f"rr={spec}"], device="cpu")
    engine = load_engines(settings)["rr"]
    req = parse_request(json.dumps({"request_id": "r", "task": "rerank", "model": "rr", "query": QUERY, "documents": DOCS}).encode())
    work = plan(req)
    body = assemble(req, work, run_plan(engine, work), model="rr")
    expected = _card_scores(path, "qwen3", QUERY, DOCS)
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    assert max(abs(got[i] - expected[i].item()) for i in range(len(DOCS))) <= ATOL, (got, expected)


# -- refusals: a generative checkpoint is never guessed into a scorer --------------------------------
def test_causal_lm_without_overrides_is_refused(causal_lm, Engine):
    path = causal_lm("qwen3")
    assert_clean_error(lambda: Engine(str(path), device="cpu"), "generative", "classifier_from_token")
    assert_clean_error(lambda: Engine(str(path), device="cpu", convert="classify"), "classification head", "hf_overrides")


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"architectures": ["Qwen3ForSequenceClassification"]}, "no weights for score"),
    ({**QWEN3_RERANKER, "classifier_from_token": ["no", "maybe"]}, "not a single token"),
    ({**QWEN3_RERANKER, "classifier_from_token": ["yes"]}, "exactly two"),
    ({"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"]}, "needs a method"),
    ({**QWEN3_RERANKER, "architectures": ["Qwen3ForCausalLM"]}, "ForSequenceClassification"),
    ({**QWEN3_RERANKER, "num_hidden_layers": 1}, "not supported"),
    ('{"architectures": ', "not valid JSON"),
])
def test_bad_overrides_are_refused(overrides, needle, causal_lm, Engine):
    path = causal_lm("qwen3")
    assert_clean_error(lambda: Engine(str(path), device="cpu", hf_overrides=overrides), needle)


def test_unproven_family_is_refused(tmp_path, Engine):
    path = build(FAMILIES["mistral"], "causal_lm", tmp_path, tokenizer=word_tokenizer(("no", "yes")))
    overrides = {**QWEN3_RERANKER, "architectures": ["MistralForSequenceClassification"]}
    assert_clean_error(lambda: Engine(str(path), device="cpu", hf_overrides=overrides), "mistral", "not supported")
