"""Request parsing and result messages: what is accepted, what is an error result, what is
dead-lettered, and that nothing else can escape ``parse_request``."""

from __future__ import annotations

import json
import string
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poolworker.protocol import (
    TASKS,
    ErrorInfo,
    InvalidRequest,
    PoolingRequest,
    UnparseableMessage,
    encode_message,
    parse_request,
    result_message,
    status_of,
)
from poolworker.tasks import plan


def raw(body: object) -> bytes:
    return json.dumps(body).encode("utf-8")


def invalid(value: bytes | None, headers=None, **limits) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_request(value, headers, **limits)
    return info.value


def unparseable(value: bytes | None, **limits) -> UnparseableMessage:
    with pytest.raises(UnparseableMessage) as info:
        parse_request(value, **limits)
    assert info.value.reason
    return info.value


# ------------------------------------------------------------------------------------------------
# Valid requests
# ------------------------------------------------------------------------------------------------
VALID = {
    "embed": {"input": ["first text", "second text"], "dimensions": 256, "truncate_prompt_tokens": 128,
              "encoding_format": "base64", "model": "all-MiniLM-L6-v2", "reply_to": "my.results",
              "metadata": {"any": ["pass", 1, 2.5, None, {"nested": True}]}},
    "classify": {"input": "one text", "use_activation": False, "truncation_side": "left"},
    "score": {"text_1": "query", "text_2": ["a", "b"], "truncate_prompt_tokens": -1},
    "rerank": {"query": "q", "documents": ["a", "b", "c"], "top_n": 2, "return_documents": False},
    "token_embed": {"input": [101, 7592, 102]},
    "token_classify": {"input": [[101, 102], [101, 7592, 102]], "encoding_format": "float"},
    "reward": {"input": "a step", "use_activation": True},
    "pooling": {"input": ["x"], "pooling_task": "token_embed", "dimensions": 8},
    "plugin": {"data": {"text": "anything the plugin reads", "max_tokens": 64}, "truncate_prompt_tokens": 32},
}


def test_a_pooling_body_with_data_and_no_input_is_a_plugin_request():
    """vLLM's /pooling reads such a body as an IOProcessorRequest."""
    request = parse_request(raw({"request_id": "p", "task": "pooling", "data": [1, "two"]}))
    assert request.task == "plugin" and request.data == [1, "two"]
    assert parse_request(raw({"request_id": "q", "task": "pooling", "input": "x", "data": 1})).task == "pooling"
    assert invalid(raw({"request_id": "r", "task": "plugin"})).error.param == "data"


@pytest.mark.parametrize("task", TASKS)
def test_every_task_has_a_valid_request_that_parses(task):
    body = {"request_id": f"r-{task}", "task": task, **VALID[task]}
    request = parse_request(raw(body))
    assert request.task == task
    assert request.request_id == f"r-{task}"
    dumped = request.model_dump(exclude_unset=True)
    for name, value in VALID[task].items():
        assert dumped[name] == value


def test_score_accepts_queries_and_documents_as_text_1_and_text_2():
    request = parse_request(raw({"request_id": "s", "task": "score", "queries": ["q1", "q2"], "documents": ["d1", "d2"]}))
    assert (request.text_1, request.text_2) == (["q1", "q2"], ["d1", "d2"])
    assert request.queries is None and request.documents is None


def test_defaults():
    request = parse_request(raw({"request_id": "d", "task": "embed", "input": "x"}))
    assert request.encoding_format == "float"
    assert request.return_documents is True
    assert request.pooling_task is None and request.dimensions is None and request.metadata is None


def test_unicode_text_and_escaped_surrogate_pairs_are_fine():
    value = b'{"request_id": "u", "task": "embed", "input": ["\\ud83d\\ude00 caf\\u00e9", "\xe6\x97\xa5\xe6\x9c\xac"]}'
    assert parse_request(value).input == ["\U0001f600 caf\u00e9", "\u65e5\u672c"]


# ------------------------------------------------------------------------------------------------
# Dead letters
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, reason_part",
    [
        (None, "tombstone"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"request_id": "\xed\xa0\x80"}', "UTF-8"),  # a surrogate encoded in UTF-8 is not UTF-8
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b'{"request_id": "a",}', "not JSON"),
        (b"{'request_id': 'a'}", "not JSON"),
        (b'"unterminated', "not JSON"),
        (b"\xef\xbb\xbf{}", "not JSON"),  # a UTF-8 BOM
        (b"[]", "list"),
        (b'"a string"', "string"),
        (b"42", "integer"),
        (b"null", "null"),
        (b"true", "boolean"),
    ],
)
def test_unanswerable_messages_go_to_the_dlq(value, reason_part):
    assert reason_part in unparseable(value).reason


def test_oversized_message_goes_to_the_dlq():
    body = raw({"request_id": "big", "task": "embed", "input": "x" * 200})
    assert "max_request_bytes" in unparseable(body, max_request_bytes=len(body) - 1).reason
    assert parse_request(body, max_request_bytes=len(body)).input == "x" * 200


def test_multi_megabyte_string_under_the_limit_parses_and_over_it_is_dlq():
    text = "kafka " * 1_200_000  # 7.2 MB of text
    body = raw({"request_id": "mb", "task": "embed", "input": text})
    assert len(body) < 8_388_608
    assert parse_request(body).input == text
    over = raw({"request_id": "mb", "task": "embed", "input": text + "x" * 1_300_000})
    assert len(over) > 8_388_608
    assert "max_request_bytes" in unparseable(over).reason


@pytest.mark.parametrize(
    "value",
    [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b'{"request_id":"a","task":"embed","input":"x","metadata":{"m":' + b"[" * 10_000 + b"]" * 10_000 + b"}}",
        b"[" * 1_000_000,  # not even closed
    ],
    ids=["arrays", "objects", "inside-metadata", "unclosed"],
)
def test_deep_nesting_goes_to_the_dlq_without_recursion(value):
    assert "deeper" in unparseable(value).reason


def test_depth_limit_is_exact_and_ignores_brackets_inside_strings():
    def nested(levels: int) -> bytes:  # the request object is level 1, then metadata, then lists
        inner = "[" * (levels - 2) + "]" * (levels - 2)
        return ('{"request_id":"a","task":"embed","input":"x","metadata":{"m":' + inner + "}}").encode()

    assert parse_request(nested(32)).metadata is not None
    unparseable(nested(33))
    brackets = "[{" * 10_000 + '\\"' + "]}" * 10
    request = parse_request(raw({"request_id": "b", "task": "embed", "input": brackets}))
    assert request.input == brackets


def test_unterminated_strings_full_of_escaped_quotes_fail_fast():
    value = b'"\\"' * 2_000_000 + b"[" * 100
    start = time.perf_counter()
    unparseable(value)
    assert time.perf_counter() - start < 2.0


# ------------------------------------------------------------------------------------------------
# Error results
# ------------------------------------------------------------------------------------------------
def embed(**fields) -> dict:
    return {"request_id": "req-7", "task": "embed", "input": "x", **fields}


INVALID = [
    # (body, param, error type)
    ({"request_id": "req-7", "input": "x"}, "task", "invalid_request"),
    (embed(task="generate"), "task", "unsupported_task"),
    (embed(task=3), "task", "unsupported_task"),
    ({"request_id": "req-7", "task": "embed"}, "input", "invalid_request"),
    (embed(input=None), "input", "invalid_request"),
    (embed(input=["a", "b", "c", 4]), "input[3]", "invalid_request"),
    (embed(input=[1, 2, -3]), "input[2]", "invalid_request"),
    (embed(input=[1, True]), "input[1]", "invalid_request"),
    (embed(input=[[1, 2], [3, 4.0]]), "input[1][1]", "invalid_request"),
    (embed(input=[[1], []]), "input[1]", "invalid_request"),
    (embed(input=[[1], "text"]), "input[1]", "invalid_request"),
    (embed(input=[]), "input", "invalid_request"),
    (embed(input={"text": "x"}), "input", "invalid_request"),
    (embed(input=[{"text": "x"}]), "input[0]", "invalid_request"),
    (embed(input=5), "input", "invalid_request"),
    (embed(dimensions="5"), "dimensions", "invalid_request"),
    (embed(dimensions=5.0), "dimensions", "invalid_request"),
    (embed(dimensions=True), "dimensions", "invalid_request"),
    (embed(dimensions=0), "dimensions", "invalid_request"),
    (embed(truncate_prompt_tokens=0), "truncate_prompt_tokens", "invalid_request"),
    (embed(truncate_prompt_tokens=-2), "truncate_prompt_tokens", "invalid_request"),
    (embed(truncation_side="middle"), "truncation_side", "invalid_request"),
    (embed(use_activation="yes"), "use_activation", "invalid_request"),
    (embed(use_activation=1), "use_activation", "invalid_request"),
    (embed(encoding_format="hex"), "encoding_format", "invalid_request"),
    (embed(request_id=""), "request_id", "invalid_request"),
    (embed(request_id="r" * 257), "request_id", "invalid_request"),
    (embed(model=7), "model", "invalid_request"),
    (embed(reply_to="bad topic!"), "reply_to", "invalid_request"),
    (embed(metadata=["not", "an", "object"]), "metadata", "invalid_request"),
    ({"request_id": "req-7", "task": "pooling", "input": "x", "pooling_task": "classify", "dimensions": 4}, "dimensions", "invalid_request"),
    ({"request_id": "req-7", "task": "pooling", "input": "x", "pooling_task": "score"}, "pooling_task", "invalid_request"),
    ({"request_id": "req-7", "task": "score", "text_1": "a"}, "text_2", "invalid_request"),
    ({"request_id": "req-7", "task": "score", "text_2": ["a"]}, "text_1", "invalid_request"),
    ({"request_id": "req-7", "task": "score", "text_1": "a", "queries": "b", "text_2": "c"}, "queries", "invalid_request"),
    ({"request_id": "req-7", "task": "score", "text_1": "a", "text_2": []}, "text_2", "invalid_request"),
    ({"request_id": "req-7", "task": "score", "text_1": [1, 2], "text_2": "a"}, "text_1[0]", "invalid_request"),
    ({"request_id": "req-7", "task": "embed", "inputs": ["x"]}, "inputs[0]", "invalid_request"),  # a Cohere field
    ({"request_id": "req-7", "task": "embed", "inputz": ["x"]}, "input", "invalid_request"),
    (embed(input=""), "input", "invalid_request"),
    (embed(input=["a", ""]), "input[1]", "invalid_request"),
    (embed(normalize=True), "normalize", "invalid_request"),
    (embed(encoding_format="bytes", embed_dtype="int4"), "embed_dtype", "invalid_request"),
    (embed(endianness="middle"), "endianness", "invalid_request"),
    (embed(cache_salt=""), "cache_salt", "invalid_request"),
    (embed(cache_salt="a/b"), "cache_salt", "invalid_request"),
    (embed(priority=2**63), "priority", "invalid_request"),
    (embed(padding="longest"), "padding", "invalid_request"),
    (embed(mm_processor_kwargs={"num_crops": 4}), "mm_processor_kwargs", "invalid_request"),
    (embed(chat_template="{{ x }}", messages=[{"role": "user", "content": "x"}], input=None), "chat_template", "invalid_request"),
    (embed(input=None, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]),
     "messages[0].content[0]", "invalid_request"),
    (embed(input=None, messages=[{"role": "user", "content": "a"}], add_generation_prompt=True, continue_final_message=True),
     "continue_final_message", "invalid_request"),
    ({"request_id": "req-7", "task": "embed", "texts": []}, "texts", "invalid_request"),
    ({"request_id": "req-7", "task": "embed", "texts": ["a"], "truncate": "MIDDLE"}, "truncate", "invalid_request"),
    ({"request_id": "req-7", "task": "embed", "texts": ["a"], "embedding_types": ["int8"]}, "embedding_types[0]", "invalid_request"),
    ({"request_id": "req-7", "task": "embed", "texts": ["a"], "images": ["data:image/png;base64,AA=="]}, "images", "invalid_request"),
    ({"request_id": "req-7", "task": "token_embed", "input": "x", "late_chunking_params": {"chunk_size": 4}},
     "late_chunking_params", "invalid_request"),
    ({"request_id": "req-7", "task": "pooling", "input": "x", "pooling_task": "encode"}, "pooling_task", "invalid_request"),
    ({"request_id": "req-7", "task": "score", "queries": "q", "items": "a", "documents": "b"}, "items", "invalid_request"),
    ({"request_id": "req-7", "task": "score", "data_1": "q"}, "data_2", "invalid_request"),
    ({"request_id": "req-7", "task": "score", "text_1": {"content": [{"type": "text", "text": "q"}]}, "text_2": "a"},
     "text_1", "invalid_request"),
    ({"request_id": "req-7", "task": "rerank", "query": "q", "documents": ["a"], "top_n": -1}, "top_n", "invalid_request"),
    ({"request_id": "req-7", "task": "rerank", "query": "q", "documents": ["a"], "max_tokens_per_doc": -1},
     "max_tokens_per_doc", "invalid_request"),
    ({"request_id": "req-7", "task": "rerank", "documents": ["a"]}, "query", "invalid_request"),
    ({"request_id": "req-7", "task": "rerank", "query": "q"}, "documents", "invalid_request"),
    ({"request_id": "req-7", "task": "rerank", "query": "q", "documents": []}, "documents", "invalid_request"),
    ({"request_id": "req-7", "task": "rerank", "query": "q", "documents": ["a", {"text": "b"}]}, "documents[1]", "invalid_request"),
    ({"request_id": "req-7", "task": "rerank", "query": ["q"], "documents": ["a"]}, "query", "invalid_request"),
]


@pytest.mark.parametrize("body, param, kind", INVALID, ids=[f"{i}-{p}" for i, (_, p, _k) in enumerate(INVALID)])
def test_invalid_requests_name_the_field_and_keep_the_request_id(body, param, kind):
    error = invalid(raw(body))
    assert error.error.param == param
    assert error.error.type == kind
    assert error.error.message
    expected_id = body["request_id"] if isinstance(body.get("request_id"), str) else None
    assert error.request_id == expected_id


# Fields the task's vLLM request class does not read: ignored, as vLLM ignores them, but named.
IGNORED = [
    (embed(query="q"), "query"),
    (embed(top_n=1), "top_n"),
    (embed(return_documents=False), "return_documents"),
    (embed(pooling_task="embed"), "pooling_task"),
    (embed(text_1="a"), "text_1"),
    (embed(inputz="a"), "inputz"),
    (embed(activation=False), "activation"),
    (embed(late_chunking_params=None), "late_chunking_params"),
    ({"request_id": "req-7", "task": "classify", "input": "x", "dimensions": 4}, "dimensions"),
    ({"request_id": "req-7", "task": "classify", "input": "x", "encoding_format": "base64"}, "encoding_format"),
    ({"request_id": "req-7", "task": "score", "text_1": "a", "text_2": "b", "input": "c"}, "input"),
    ({"request_id": "req-7", "task": "rerank", "query": "q", "documents": ["a"], "dimensions": 4}, "dimensions"),
    ({"request_id": "req-7", "task": "embed", "texts": ["a"], "encoding_format": "base64"}, "encoding_format"),
    ({"request_id": "req-7", "task": "embed", "input": "x", "warnings": ["forged"]}, "warnings"),
]


@pytest.mark.parametrize("body, field", IGNORED, ids=[f for _, f in IGNORED])
def test_fields_the_task_does_not_read_are_ignored_with_a_warning_naming_them(body, field):
    request = parse_request(raw(body))
    assert len(request.warnings) == 1 and f"'{field}'" in request.warnings[0]
    assert field == "warnings" or field not in request.model_fields_set


def test_a_misspelt_required_field_is_named_in_the_error():
    error = invalid(raw({"request_id": "t", "task": "embed", "inputz": "x"})).error
    assert error.param == "input" and "'inputz' looks like a misspelling" in error.message
    error = invalid(raw({"request_id": "t", "task": "rerank", "querry": "q", "documents": ["d"]})).error
    assert error.param == "query" and "'querry'" in error.message


def test_every_field_of_vllms_request_classes_is_accepted():
    common = {"user": "u", "priority": -3, "cache_salt": "salt", "mm_processor_kwargs": {}, "truncate_prompt_tokens": -1,
              "truncation_side": "left", "padding": "do_not_pad"}
    bodies = [
        embed(**common, add_special_tokens=False, encoding_format="bytes_only", embed_dtype="bfloat16", endianness="big",
              dimensions=8, use_activation=False),
        embed(**common, input=None, messages=[{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "u"}]}],
              add_generation_prompt=True, add_special_tokens=True, chat_template_kwargs={"enable_thinking": False}, media_io_kwargs={}),
        {"request_id": "r", "task": "embed", "texts": ["a"], "input_type": "query", "output_dimension": 8, "images": None,
         "embedding_types": ["float", "binary", "ubinary", "base64"], "truncate": "START", "max_tokens": 5, "priority": 1},
        {"request_id": "r", "task": "token_embed", "input": "x", **common, "late_chunking_params": {}, "embed_dtype": "float16"},
        {"request_id": "r", "task": "classify", "input": ["x"], **common, "use_activation": True, "add_special_tokens": True},
        {"request_id": "r", "task": "pooling", "pooling_task": "token_classify", "input": "x", **common, "encoding_format": "base64"},
        {"request_id": "r", "task": "score", "data_1": "q", "data_2": ["a"], **common, "max_tokens_per_query": 3,
         "max_tokens_per_doc": 4, "instruction": "i", "chat_template_kwargs": {"k": 1}, "use_activation": False},
        {"request_id": "r", "task": "rerank", "query": "q", "documents": "a", "top_n": 0, **common},
    ]
    for body in bodies:
        request = parse_request(raw(body))
        assert request.warnings == (), body


def test_chat_input_forms_become_a_list_of_conversations():
    one = [{"role": "user", "content": "hi"}]
    for body in (embed(input=None, messages=one), embed(input=one), embed(input=None, messages=[one, one]), embed(input=[one, one])):
        request = parse_request(raw(body))
        assert request.form == "chat" and request.input is None
        assert request.messages in ([one], [one, one])
        assert request.special_tokens is False


def test_score_name_pairs_fold_into_text_1_and_text_2():
    for a, b in (("text_1", "text_2"), ("queries", "documents"), ("queries", "items"), ("data_1", "data_2")):
        request = parse_request(raw({"request_id": "r", "task": "score", a: "q", b: ["x", "y"]}))
        assert (request.text_1, request.text_2) == ("q", ["x", "y"])


def test_a_cohere_body_folds_into_input_dimensions_and_truncation():
    request = parse_request(raw({"request_id": "r", "task": "embed", "texts": ["a", "b"], "output_dimension": 8,
                                 "truncate": "START", "max_tokens": 7}))
    assert (request.form, request.input, request.dimensions) == ("cohere", ["a", "b"], 8)
    assert (request.truncate_prompt_tokens, request.truncation_side) == (7, "left")
    request = parse_request(raw({"request_id": "r", "task": "embed", "texts": ["a"]}))
    assert (request.truncate_prompt_tokens, request.truncation_side) == (-1, None)  # END: truncate at the model's maximum
    request = parse_request(raw({"request_id": "r", "task": "embed", "texts": ["a"], "truncate": "NONE"}))
    assert request.truncate_prompt_tokens is None


def test_the_item_limit_applies_to_input_documents_and_texts():
    many = ["x"] * 100_000
    error = invalid(raw(embed(input=many)))
    assert (error.error.param, error.request_id) == ("input", "req-7")
    assert "100000" in error.error.message
    assert invalid(raw({"request_id": "r", "task": "rerank", "query": "q", "documents": many[:11]}), max_items=10).error.param == "documents"
    assert invalid(raw({"request_id": "r", "task": "score", "text_1": "q", "text_2": many[:11]}), max_items=10).error.param == "text_2"
    assert invalid(raw(embed(input=[[1]] * 11)), max_items=10).error.param == "input"
    assert invalid(raw({"request_id": "r", "task": "embed", "texts": many[:11]}), max_items=10).error.param == "texts"
    one = [{"role": "user", "content": "x"}]
    assert invalid(raw({"request_id": "r", "task": "embed", "messages": [one] * 11}), max_items=10).error.param == "messages"
    # one prompt given as token ids is one item, however long (its length is the engine's check)
    assert len(parse_request(raw(embed(input=list(range(50)))), max_items=10).input) == 50
    assert len(parse_request(raw(embed(input=many[:10])), max_items=10).input) == 10


def test_a_duplicate_key_is_an_error_naming_it():
    error = invalid(b'{"request_id": "dup", "task": "embed", "task": "score", "input": "x"}')
    assert (error.error.param, error.request_id) == ("task", "dup")
    error = invalid(b'{"request_id": "dup", "task": "embed", "input": "x", "metadata": {"k": 1, "k": 2}}')
    assert error.error.param == "metadata.k"


# ------------------------------------------------------------------------------------------------
# Numbers and strings JSON allows but we refuse
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"])
def test_non_finite_numbers_are_rejected_with_their_path(literal):
    value = b'{"request_id": "nan", "task": "embed", "input": "x", "metadata": {"score": [1, ' + literal + b"]}}"
    error = invalid(value)
    assert (error.error.param, error.request_id) == ("metadata.score[1]", "nan")
    assert error.metadata is None  # the metadata holds the bad number: never echoed
    value = b'{"request_id": "nan", "task": "embed", "input": "x", "dimensions": ' + literal + b"}"
    assert invalid(value).error.param == "dimensions"


def test_an_integer_too_long_to_convert_is_an_error_not_a_dead_letter():
    digits = b"9" * (sys.get_int_max_str_digits() + 1) if hasattr(sys, "get_int_max_str_digits") else b"9" * 5000
    error = invalid(b'{"request_id": "long", "task": "embed", "input": "x", "dimensions": ' + digits + b"}")
    assert (error.error.param, error.request_id) == ("dimensions", "long")


@pytest.mark.parametrize(
    "value, param",
    [
        (b'{"request_id": "s", "task": "embed", "input": "a\\ud800b"}', "input"),
        (b'{"request_id": "s", "task": "embed", "input": ["ok", "\\udfff"]}', "input[1]"),
        (b'{"request_id": "s", "task": "embed", "input": "\\ude00\\ud83d"}', "input"),  # reversed pair
        (b'{"request_id": "s", "task": "embed", "input": "x", "metadata": {"k": "\\ud800"}}', "metadata.k"),
        (b'{"request_id": "s", "task": "embed", "input": "x", "metadata": {"\\ud800": 1}}', "metadata"),
        (b'{"request_id": "s", "task": "rerank", "query": "\\udbff", "documents": ["a"]}', "query"),
    ],
)
def test_lone_surrogates_are_rejected_with_their_field(value, param):
    error = invalid(value)
    assert (error.error.param, error.request_id) == (param, "s")


def test_a_request_id_with_a_lone_surrogate_is_not_echoed():
    value = b'{"request_id": "\\ud800", "task": "embed", "input": "x"}'
    assert invalid(value).request_id is None
    assert invalid(value, [("request_id", b"from-header")]).request_id == "from-header"


# ------------------------------------------------------------------------------------------------
# Headers and recovery
# ------------------------------------------------------------------------------------------------
def test_headers_fill_missing_fields():
    request = parse_request(raw({"input": "x"}), [("task", b"embed"), ("model", b"m1"), ("request_id", b"h-1")])
    assert (request.task, request.model, request.request_id) == ("embed", "m1", "h-1")


def test_headers_fill_null_fields_but_the_body_wins_when_set():
    headers = [("task", b"classify"), ("model", b"header-model"), ("request_id", b"h-1")]
    request = parse_request(raw({"request_id": "b-1", "task": "embed", "model": None, "input": "x"}), headers)
    assert (request.task, request.model, request.request_id) == ("embed", "header-model", "b-1")


def test_unrelated_and_undecodable_headers_are_ignored():
    headers = [("traceparent", b"00-abc"), ("task", b"\xff"), ("task", b"embed"), ("model", None)]
    request = parse_request(raw({"request_id": "r", "input": "x"}), headers)
    assert request.task == "embed" and request.model is None


def test_request_id_recovery_order():
    body = {"request_id": 42, "task": "embed", "input": "x"}
    assert invalid(raw(body), [("request_id", b"from-header")]).request_id == "from-header"
    assert invalid(raw(body)).request_id is None
    body = {"request_id": "from-body", "task": "embed", "input": 5}
    assert invalid(raw(body), [("request_id", b"from-header")]).request_id == "from-body"
    assert invalid(raw({"task": "embed", "input": 5})).request_id is None


def test_invalid_requests_keep_what_is_needed_to_answer():
    body = {"request_id": "r", "task": "embed", "model": "m", "reply_to": "caller.results",
            "metadata": {"trace": "abc"}, "input": 5}
    error = invalid(raw(body))
    assert (error.task, error.model, error.reply_to, error.metadata) == ("embed", "m", "caller.results", {"trace": "abc"})
    error = invalid(raw({**body, "reply_to": "no spaces allowed"}))
    assert error.reply_to is None and error.error.param == "input"
    error = invalid(raw({"request_id": "r", "input": "x"}), [("task", b"embed-v9"), ("model", b"hm")])
    assert (error.task, error.model, error.error.type) == ("embed-v9", "hm", "unsupported_task")


def test_error_for_an_already_parsed_request_carries_its_fields():
    request = parse_request(raw({"request_id": "r", "task": "embed", "input": "x", "reply_to": "t", "metadata": {"a": 1}}))
    error = InvalidRequest.for_request(request, ErrorInfo(type="input_too_long", message="too long", param="input"))
    assert (error.request_id, error.task, error.reply_to, error.metadata) == ("r", "embed", "t", {"a": 1})
    assert str(error) == "too long"


# ------------------------------------------------------------------------------------------------
# Result messages
# ------------------------------------------------------------------------------------------------
def test_ok_result_is_the_body_plus_the_envelope():
    body = {"object": "list", "data": [{"index": 0, "embedding": [0.5]}], "usage": {"prompt_tokens": 3, "total_tokens": 3}}
    message = result_message(request_id="r", task="embed", model="m", metadata={"k": "v"}, body=body)
    assert message == {**body, "request_id": "r", "task": "embed", "model": "m", "metadata": {"k": "v"}, "error": None}
    assert status_of(message) == "ok"
    encoded = encode_message(message)
    assert b" " not in encoded  # compact separators
    assert json.loads(encoded) == message


def test_error_result_has_no_body_fields():
    error = ErrorInfo(type="invalid_request", message="input is required", param="input")
    message = result_message(request_id=None, task="embed", model=None, metadata=None, error=error)
    assert message == {"request_id": None, "task": "embed", "model": None, "metadata": None,
                       "error": {"type": "invalid_request", "message": "input is required", "param": "input"}}
    assert status_of(message) == "error"
    with pytest.raises(ValueError):
        result_message(request_id="r", task="embed", model=None, metadata=None, body={"data": []}, error=error)


def test_encode_message_writes_utf8_and_refuses_nan():
    assert encode_message({"text": "caf\u00e9 \U0001f600"}) == '{"text":"caf\u00e9 \U0001f600"}'.encode("utf-8")
    with pytest.raises(ValueError):
        encode_message({"score": float("nan")})


NON_FINITE = [float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("bad", NON_FINITE)
@pytest.mark.parametrize(
    "place",
    [
        lambda x: {"score": x},
        lambda x: {"data": [{"index": 0, "embedding": [0.5, x, 0.25]}]},
        lambda x: {"data": [{"data": [[0.5, 1.0], [x, 2.0]]}]},
        lambda x: {"metadata": {"tags": ["a", 1, x]}},
        lambda x: {"pair": (1.0, x)},
        lambda x: {"data": [{"embedding": np.array([0.5, x], dtype=np.float32)}]},
        lambda x: {"data": [{"data": np.array([[0.5, 1.0], [2.0, x]], dtype=np.float32)}]},
        lambda x: {"data": [np.array([1.0, 2.0]), np.array([x, 2.0])]},
        lambda x: {"score": np.float32(x)},
        lambda x: {"score": np.float64(x)},
        lambda x: {"mixed": [2**70, x]},
    ],
)
def test_encode_message_refuses_a_non_finite_number_anywhere(place, bad):
    """orjson would write NaN as null, which a caller would read as a missing value."""
    with pytest.raises(ValueError):
        encode_message(place(bad))


def test_encode_message_accepts_finite_values_whose_sum_overflows():
    assert json.loads(encode_message({"x": [1e308, 1e308]})) == {"x": [1e308, 1e308]}


def test_encode_message_writes_numpy_arrays_as_json_arrays_of_the_same_float32_values():
    rng = np.random.default_rng(7)
    vector = rng.standard_normal(384).astype(np.float32)
    matrix = rng.standard_normal((5, 8)).astype(np.float32)
    encoded = encode_message({"embedding": vector, "data": matrix, "strided": matrix[:, ::2], "big_endian": vector.astype(">f4")})
    decoded = json.loads(encoded)
    assert np.array_equal(np.array(decoded["embedding"], dtype=np.float32), vector)
    assert np.array_equal(np.array(decoded["data"], dtype=np.float32), matrix)
    assert np.array_equal(np.array(decoded["strided"], dtype=np.float32), matrix[:, ::2])
    assert np.array_equal(np.array(decoded["big_endian"], dtype=np.float32), vector)
    # float32 values go out in their shortest float32 form, not as their float64 expansion
    assert encode_message({"x": np.array([0.1], dtype=np.float32)}) == b'{"x":[0.1]}'
    # ... also from a strided view (a Matryoshka cut of a batch)
    assert encode_message({"x": matrix[:, ::2]}) == encode_message({"x": matrix[:, ::2].copy()})


def test_encode_message_keeps_what_json_accepted():
    """Integers beyond 64 bits (a caller's metadata may hold them) and non-string keys."""
    message = {"metadata": {"id": 2**70, "neg": -(2**70)}, 3: True}
    assert json.loads(encode_message(message)) == json.loads(json.dumps(message))


# ------------------------------------------------------------------------------------------------
# Fuzzing: only the two documented exceptions may escape, and every outcome can be answered
# ------------------------------------------------------------------------------------------------
FIELDS = [*PoolingRequest.model_fields, "inputs", "text", "n"]
WORDS = [*TASKS, "float", "base64", "left", "right", "m", "req", "a.topic", ""]

any_text = st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates included
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
    | st.sampled_from(WORDS)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(FIELDS) | any_text, inner, max_size=5),
    max_leaves=20,
)

# Well-formed bodies for each task reach the validators and planning that random dictionaries
# never get past; a mutated copy (one field replaced by a random value) probes each check.
texts = st.text(max_size=16)
text_lists = st.lists(texts, min_size=1, max_size=4)
token_ids = st.lists(st.integers(min_value=0, max_value=30_000), min_size=1, max_size=6)
prompts = texts | text_lists | token_ids | st.lists(token_ids, min_size=1, max_size=3)
COMMON = {
    "model": st.text(min_size=1, max_size=8),
    "reply_to": st.from_regex(r"[a-z0-9._-]{1,12}", fullmatch=True),
    "metadata": st.dictionaries(texts, json_values, max_size=3),
    "truncate_prompt_tokens": st.sampled_from([-1, 1, 64]),
    "use_activation": st.booleans(),
}
INPUT_OPTIONS = {**COMMON, "truncation_side": st.sampled_from(["left", "right"])}
VECTOR_OPTIONS = {**INPUT_OPTIONS, "dimensions": st.integers(min_value=1, max_value=384),
                  "encoding_format": st.sampled_from(["float", "base64"])}
MATRIX_OPTIONS = {**INPUT_OPTIONS, "encoding_format": st.sampled_from(["float", "base64"])}
TASK_BODIES = {
    "embed": ({"input": prompts}, VECTOR_OPTIONS),
    "token_embed": ({"input": prompts}, VECTOR_OPTIONS),
    "classify": ({"input": prompts}, INPUT_OPTIONS),
    "token_classify": ({"input": prompts}, MATRIX_OPTIONS),
    "reward": ({"input": prompts}, MATRIX_OPTIONS),
    "pooling": ({"input": prompts}, {**VECTOR_OPTIONS, "pooling_task": st.sampled_from(["embed", "token_embed"])}),
    "score": ({"text_1": texts | text_lists, "text_2": texts | text_lists}, COMMON),
    "rerank": ({"query": texts, "documents": text_lists},
               {**COMMON, "top_n": st.integers(min_value=1, max_value=4), "return_documents": st.booleans()}),
    "plugin": ({"data": json_values.filter(lambda v: v is not None)}, COMMON),
}


def well_formed_body(task: str):
    required, optional = TASK_BODIES[task]
    fixed = {"request_id": st.text(min_size=1, max_size=10), "task": st.just(task), **required}
    return st.fixed_dictionaries(fixed, optional=optional)


well_formed = st.sampled_from(TASKS).flatmap(well_formed_body)
mutated = st.builds(lambda body, key, value: {**body, key: value}, well_formed, st.sampled_from(FIELDS), json_values)
bodies = (
    well_formed
    | mutated
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=8)
    | json_values
)
header_values = st.binary(max_size=12) | st.sampled_from([w.encode() for w in WORDS])
headers = st.none() | st.lists(st.tuples(st.sampled_from(["task", "model", "request_id", "other"]), header_values), max_size=4)


def serialise(body: object, ascii_only: bool) -> bytes:
    """JSON as a careless producer might write it: NaN allowed, and lone surrogates either
    escaped (ascii_only) or written raw (then not valid UTF-8)."""
    return json.dumps(body, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")


def answer(value: bytes | None, headers) -> None:
    """Parse and produce whatever the worker would send; raise on anything unexpected."""
    try:
        request = parse_request(value, headers)
    except UnparseableMessage as exc:
        assert isinstance(exc.reason, str) and exc.reason
        return
    except InvalidRequest as exc:
        message = result_message(request_id=exc.request_id, task=exc.task, model=exc.model, metadata=exc.metadata, error=exc.error)
        assert status_of(message) == "error"
        assert json.loads(encode_message(message))["error"]["type"] == exc.error.type
        return
    message = result_message(request_id=request.request_id, task=request.task, model=request.model,
                             metadata=request.metadata, body=request.model_dump())
    assert status_of(message) == "ok"
    assert json.loads(encode_message(message))["request_id"] == request.request_id
    if request.task == "plugin":
        return  # planned from its plugin's prompts (tests/test_plugins.py)
    try:
        work = plan(request)
    except InvalidRequest as exc:
        assert exc.request_id == request.request_id
    else:
        assert work.items


FUZZ = settings(max_examples=3000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(value=st.binary(max_size=200) | st.text(alphabet=string.printable, max_size=200).map(str.encode), headers=headers)
def test_fuzz_random_bytes(value, headers):
    answer(value, headers)


@FUZZ
@given(body=bodies, ascii_only=st.booleans(), headers=headers, cut=st.none() | st.integers(min_value=0, max_value=400))
def test_fuzz_json_like_objects(body, ascii_only, headers, cut):
    value = serialise(body, ascii_only)
    answer(value if cut is None else value[:cut], headers)


# ------------------------------------------------------------------------------------------------
# The orjson fast path of decoding: it decides only what ``json`` would decide the same way
# ------------------------------------------------------------------------------------------------
_JSON_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                 | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
_JSON_VALUES = st.recursive(_JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(st.text(max_size=4), inner, max_size=4), max_leaves=12)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=4), _JSON_VALUES, max_size=5), st.booleans())
def test_fast_decoding_gives_what_json_gives_or_steps_aside(body, compact):
    from poolworker.protocol.decoding import _fast_loads

    text = json.dumps(body, separators=(",", ":") if compact else None, ensure_ascii=False)
    fast = _fast_loads(text)
    if fast is not None:
        assert repr(fast) == repr(json.loads(text))  # same values and types (an int stays an int)


@pytest.mark.parametrize("text", [
    '{"a":1,"a":2}',  # a duplicate key: orjson would keep the last silently
    '{"a":{"b":1,"b":1}}',
    '{"a" :1,"a":2}',  # spaced, so the count of '":' cannot vouch
    '{"a":1,"b":"\\":","a":2}',  # an escaped quote before a colon inside a string
    '{"a":123456789012345678901234567890}',  # orjson would make it a float
    '{"a":-9223372036854775809}',
    '{"a":"\\ud800"}',
    '{"a":NaN}',
    '{"a":1e999}',
])
def test_fast_decoding_leaves_hostile_texts_to_the_careful_decoder(text):
    from poolworker.protocol.decoding import _fast_loads

    assert _fast_loads(text) is None
