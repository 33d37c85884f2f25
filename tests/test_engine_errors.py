"""Bad inputs give ValueError/TypeError naming the offending field, never IndexError/RuntimeError."""

from __future__ import annotations

import pytest
import torch
from refs import assert_clean_error, assert_close, embedding

DOCS = ["first document", "second document"]


# ----------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        None,
        42,
        3.5,
        [1.5],
        ["ok", 3.5],
        ["ok", None],
        [["a", 1]],
        [[1, "a"]],
        [{"foo": "bar"}],
        {"foo": "bar"},
        [b"bytes"],
        [[1.0, 2.0]],
    ],
    ids=repr,
)
def test_embed_bad_prompts(minilm_engine, bad):
    assert_clean_error(lambda: minilm_engine.embed(bad), "prompt")


def test_token_ids_outside_vocab(minilm_engine):
    assert_clean_error(lambda: minilm_engine.embed([[101, 999999, 102]]), "999999")
    assert_clean_error(lambda: minilm_engine.embed([[101, 30522, 102]]), "30522")


def test_negative_token_ids(minilm_engine):
    assert_clean_error(lambda: minilm_engine.embed([[101, -1, 102]]), "-1")


def test_empty_token_id_prompt(minilm_engine):
    # An empty id list has nothing to pool: a clean error, not an IndexError / NaN.
    assert_clean_error(lambda: minilm_engine.embed([[]]))


def test_vocab_boundary_allowed(minilm_engine, minilm_hf):
    from refs import minilm_embed

    ids = [101, 30521, 102]
    out = minilm_engine.embed([ids])[0]
    assert_close(embedding(out), minilm_embed(minilm_hf, ids), what="last vocab id")


@pytest.mark.parametrize("dims", [0, -5, 100000, 385])
def test_bad_dimensions(minilm_engine, dims):
    assert_clean_error(lambda: minilm_engine.embed(["hello"], dimensions=dims), "dimensions")


@pytest.mark.parametrize("dims", [1.5, "64"])
def test_dimensions_wrong_type(minilm_engine, dims):
    assert_clean_error(lambda: minilm_engine.embed(["hello"], dimensions=dims), "dimensions")


@pytest.mark.parametrize("bad", [None, 5, [{"a": 1}], ["ok", 7]])
def test_score_bad_inputs(minilm_engine, bad):
    assert_clean_error(lambda: minilm_engine.score("query", bad))


def test_score_n_vs_n_length_mismatch(minilm_engine):
    assert_clean_error(lambda: minilm_engine.score(["a", "b", "c"], ["x", "y"]))


def test_score_dict_as_text(minilm_engine):
    assert_clean_error(lambda: minilm_engine.score({"text": "q"}, DOCS))


# ----------------------------------------------------------------------------------------------
# Rerank
# ----------------------------------------------------------------------------------------------
def test_rerank_empty_documents(minilm_engine):
    assert_clean_error(lambda: minilm_engine.rerank("query", []), "documents")


@pytest.mark.parametrize("top_n", [0, -1, -10, len(DOCS) + 1])
def test_rerank_bad_top_n(minilm_engine, top_n):
    assert_clean_error(lambda: minilm_engine.rerank("query", DOCS, top_n=top_n), "top_n")


def test_rerank_bad_query(minilm_engine):
    assert_clean_error(lambda: minilm_engine.rerank(None, DOCS), "query")
    assert_clean_error(lambda: minilm_engine.rerank({"q": 1}, DOCS), "query")


def test_rerank_bad_documents(minilm_engine):
    assert_clean_error(lambda: minilm_engine.rerank("query", None), "documents")
    assert_clean_error(lambda: minilm_engine.rerank("query", ["ok", 3]), "document")


# ----------------------------------------------------------------------------------------------
# Tasks the model cannot do
# ----------------------------------------------------------------------------------------------
def test_classify_on_embedding_model(minilm_engine):
    exc = assert_clean_error(lambda: minilm_engine.classify(["hello"]), "classify")
    assert isinstance(exc, ValueError)
    msg = str(exc)
    for task in minilm_engine.supported_tasks:
        assert task in msg, f"{msg!r} does not list supported task {task!r}"


def test_encode_unknown_pooling_task(minilm_engine):
    assert_clean_error(lambda: minilm_engine.encode(["hello"], pooling_task="bogus"), "bogus")


def test_reward_on_embedding_model(minilm_engine):
    assert_clean_error(lambda: minilm_engine.reward(["hello"]))


def test_score_on_three_label_classifier(Engine, seq_cls_path):
    eng = Engine(str(seq_cls_path))
    assert_clean_error(lambda: eng.score("a", "b"))
    assert_clean_error(lambda: eng.rerank("a", ["b", "c"]))


def test_unknown_task_argument(Engine, minilm_path):
    assert_clean_error(lambda: Engine(str(minilm_path), task="definitely-not-a-task"), "task")


def test_task_model_cannot_do(Engine, minilm_path):
    assert_clean_error(lambda: Engine(str(minilm_path), task="classify"), "classify")


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def test_pickle_refused_by_default(Engine, pickle_only_path):
    exc = assert_clean_error(lambda: Engine(str(pickle_only_path)), "allow_pickle")
    assert isinstance(exc, ValueError)


def test_pickle_loads_when_allowed(Engine, pickle_only_path, minilm_st):
    eng = Engine(str(pickle_only_path), allow_pickle=True)
    texts = ["pickled weights load when explicitly allowed", "second"]
    got = torch.stack([embedding(o) for o in eng.embed(texts)])
    ref = minilm_st.encode(texts, convert_to_tensor=True).float().cpu()
    assert_close(got, ref, what="pickle-only MiniLM")


def test_unresolvable_name(Engine, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "no-such-org-zz/no-such-model-zz"
    exc = assert_clean_error(lambda: Engine(name), "no-such-model-zz")
    msg = str(exc)
    # Where it looked: a path (the cache / the local folder) or the word "cache".
    rest = msg.replace(name, "")
    assert "cache" in msg.lower() or "/" in rest or "\\" in rest, f"{msg!r} does not say where it looked"


def test_missing_local_folder(Engine, tmp_path):
    missing = tmp_path / "does-not-exist"
    assert_clean_error(lambda: Engine(str(missing)), "does-not-exist")


def test_folder_without_weights(Engine, tmp_path, minilm_path):
    import shutil

    target = tmp_path / "no_weights"
    target.mkdir()
    shutil.copy(minilm_path / "config.json", target / "config.json")
    # Not in the ValueError/TypeError list of the contract: a missing-file error is fine too.
    assert_clean_error(lambda: Engine(str(target)), "weights", types=(ValueError, TypeError, OSError))


def test_bad_truncation_side(minilm_engine):
    assert_clean_error(
        lambda: minilm_engine.embed(["hello"], truncate_prompt_tokens=3, truncation_side="middle"), "truncation_side"
    )
