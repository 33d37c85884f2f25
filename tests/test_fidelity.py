"""The fidelity matrix: every family × task the engine serves matches transformers (and
sentence-transformers where the checkpoint has its files) on the same weights, batched and one
by one; every family it does not serve is refused at load with a typed error.

Checkpoints are tiny random models built once per module (tests/fidelity_models.py). References
run each text alone, unpadded, in the family's own transformers classes: nothing here comes
from the code under test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fidelity_models import FAMILIES, build, write_st_modules
from refs import as_tensor

ATOL = 1e-4
MIN_COSINE = 0.99999
TEXTS = [
    "hi",
    "Kafka carries the requests.",
    "A much longer sentence about pooling models, which turn every token of a text into one vector or score.",
    "short one",
    "tokens " * 12,
]

# family → how its embed checkpoint pools: a Sentence-Transformers Pooling mode (with ST files,
# ST is the reference), or None (no ST files: the engine's default, LAST for decoders and CLS for
# encoders, against transformers). Dense: ST Dense output size (sentence-T5, EmbeddingGemma).
EMBED_CASES: dict[str, tuple[str | None, int | None]] = {
    "bert": ("mean", None), "roberta": ("mean", None), "xlm-roberta": (None, None), "distilbert": ("mean", None),
    "albert": ("cls", None), "electra": (None, None), "deberta-v2": ("mean", None), "modernbert-cls": ("mean", None),
    "mpnet": ("mean", None), "t5": ("mean", 32), "gemma3": ("mean", 32), "qwen2": (None, None),
    "qwen3": ("lasttoken", None), "llama": (None, None), "mistral": (None, None),
}
CLASSIFY_CASES = [
    "bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta-v2", "modernbert-cls",
    "modernbert-mean", "mpnet", "qwen2", "qwen3", "llama", "mistral", "funnel",
]
TOKEN_CLASSIFY_CASES = ["bert", "electra", "deberta-v2", "modernbert-cls", "qwen3", "funnel"]
TRANSFORMERS_HEAD = {"funnel"}
# family × task that must be refused (not on the allow-list).
REFUSED_CASES = [("megatron-bert", "classify"), ("megatron-bert", "embed"), ("funnel", "embed")]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core host every thread
    barrier costs milliseconds per op. OMP_NUM_THREADS keeps the engine's Runner from raising
    the count again (runner.configure_threads)."""
    mp = pytest.MonkeyPatch()
    before = torch.get_num_threads()
    mp.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    mp.undo()


# ----------------------------------------------------------------------------------------------
# Checkpoints: built lazily, once per module
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    built: dict[tuple[str, str], Path] = {}

    def get(name: str, task: str) -> Path:
        if (name, task) not in built:
            family = FAMILIES[name]
            out = build(family, task, tmp_path_factory.mktemp(f"{name}-{task}"))
            if task == "embed" and name in EMBED_CASES and EMBED_CASES[name][0] is not None:
                pooling, dense = EMBED_CASES[name]
                write_st_modules(out, 64, pooling, dense)
            built[name, task] = out
        return built[name, task]

    return get


# ----------------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------------
def _tokenize(path: Path, texts: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    return [tok(t)["input_ids"] for t in texts]


@torch.no_grad()
def _reference_outputs(model, ids: list[list[int]]) -> list[torch.Tensor]:
    """``model``'s first output for each sequence alone: logits, or the last hidden state."""
    outs = []
    for x in ids:
        input_ids = torch.tensor([x])
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
        first = out.logits if hasattr(out, "logits") else out.last_hidden_state
        outs.append(first[0].float())
    return outs


def _transformers_model(path: Path, name: str, task: str):
    return FAMILIES[name].cls(task).from_pretrained(str(path)).eval()


def _reference_embeddings(path: Path, name: str, ids: list[list[int]]) -> torch.Tensor:
    pooling, _ = EMBED_CASES[name]
    if pooling is not None:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(path), device="cpu")
        return st.encode(TEXTS, batch_size=1, convert_to_tensor=True).float().cpu()
    hidden = _reference_outputs(_transformers_model(path, name, "embed"), ids)
    row = -1 if FAMILIES[name].is_decoder else 0
    return F.normalize(torch.stack([h[row] for h in hidden]), dim=-1)


# ----------------------------------------------------------------------------------------------
# Comparisons
# ----------------------------------------------------------------------------------------------
def _assert_vectors(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual - expected).abs().max().item()
    assert diff <= ATOL, f"{what}: max abs diff {diff:.3e} > {ATOL:.0e}"
    if actual.dim() == 2 and actual.shape[-1] > 1:
        cos = F.cosine_similarity(actual, expected, dim=-1).min().item()
        assert cos >= MIN_COSINE, f"{what}: cosine {cos:.7f} < {MIN_COSINE}"


def _both_ways(run, texts: list[str]) -> dict[str, list]:
    """The engine's outputs for ``texts`` in one call (one padded / packed batch of different
    lengths) and one text per call."""
    return {"batched": run(texts), "one-by-one": [run([t])[0] for t in texts]}


def _engine(Engine, path: Path):
    return Engine(str(path), device="cpu")


# ----------------------------------------------------------------------------------------------
# The matrix
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(EMBED_CASES))
def test_embed_matches_reference(name, checkpoint, Engine):
    path = checkpoint(name, "embed")
    engine = _engine(Engine, path)
    ids = _tokenize(path, TEXTS)
    expected = _reference_embeddings(path, name, ids)
    assert engine.describe()["head_path"] == "pooled-rows"
    for mode, outs in _both_ways(lambda t: engine.embed(t, use_tqdm=False), TEXTS).items():
        assert [o.prompt_token_ids for o in outs] == ids, f"{name} {mode}: token ids differ from the tokenizer's"
        _assert_vectors(torch.stack([as_tensor(o.outputs.embedding) for o in outs]), expected, f"{name} embed {mode}")


@pytest.mark.parametrize("name", CLASSIFY_CASES)
def test_classify_matches_transformers(name, checkpoint, Engine):
    path = checkpoint(name, "classify")
    engine = _engine(Engine, path)
    ids = _tokenize(path, TEXTS)
    logits = torch.stack([x.reshape(-1) for x in _reference_outputs(_transformers_model(path, name, "classify"), ids)])
    expected_path = "transformers-head" if name in TRANSFORMERS_HEAD else "pooled-rows"
    assert engine.describe()["head_path"] == expected_path
    for mode, outs in _both_ways(lambda t: engine.classify(t, use_tqdm=False), TEXTS).items():
        probs = torch.stack([as_tensor(o.outputs.probs) for o in outs])
        _assert_vectors(probs, torch.softmax(logits, dim=-1), f"{name} classify probs {mode}")
    raw = torch.stack([as_tensor(o.outputs.data) for o in engine.encode(TEXTS, pooling_task="classify", use_activation=False, use_tqdm=False)])
    _assert_vectors(raw, logits, f"{name} classify logits")


@pytest.mark.parametrize("name", TOKEN_CLASSIFY_CASES)
def test_token_classify_matches_transformers(name, checkpoint, Engine):
    path = checkpoint(name, "token_classify")
    engine = _engine(Engine, path)
    ids = _tokenize(path, TEXTS)
    expected = [torch.softmax(x, dim=-1) for x in _reference_outputs(_transformers_model(path, name, "token_classify"), ids)]
    run = lambda t: engine.encode(t, pooling_task="token_classify", use_tqdm=False)
    for mode, outs in _both_ways(run, TEXTS).items():
        for text, out, ref in zip(TEXTS, outs, expected):
            _assert_vectors(as_tensor(out.outputs.data), ref, f"{name} token_classify {mode} {text[:20]!r}")


def test_decoder_reward_rows_are_transformers_logits(checkpoint, Engine):
    """token_classify on a decoder *sequence* classifier (vLLM's reward use): transformers
    computes these per-position logits before it picks the last token."""
    path = checkpoint("qwen2", "classify")
    engine = _engine(Engine, path)
    ids = _tokenize(path, TEXTS)
    model = _transformers_model(path, "qwen2", "classify")
    with torch.no_grad():
        expected = [model.score(model.model(input_ids=torch.tensor([x])).last_hidden_state)[0] for x in ids]
    outs = engine.reward(TEXTS, use_activation=False, use_tqdm=False)
    for text, out, ref in zip(TEXTS, outs, expected):
        _assert_vectors(as_tensor(out.outputs.data), ref.float(), f"qwen2 reward rows {text[:20]!r}")


# ----------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,task", REFUSED_CASES)
def test_unsupported_family_is_refused(name, task, checkpoint, Engine):
    from poolworker.engine.conversion import UnsupportedArchitectureError

    path = checkpoint(name, task)
    architecture = FAMILIES[name].cls(task).__name__
    with pytest.raises(UnsupportedArchitectureError) as info:
        _engine(Engine, path)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert architecture in message and "bert" in info.value.supported
    assert ", ".join(info.value.supported) in message, "the error lists what is supported"


def test_cli_models_names_the_head_path_and_the_refusal(checkpoint):
    from typer.testing import CliRunner

    from poolworker.cli import app

    runner = CliRunner()
    served = runner.invoke(app, ["models", str(checkpoint("funnel", "classify"))])
    assert served.exit_code == 0, served.output
    assert "transformers-head" in served.output
    refused = runner.invoke(app, ["models", str(checkpoint("megatron-bert", "classify"))])
    assert refused.exit_code == 2
    assert "MegatronBertForSequenceClassification" in refused.output and "not supported" in refused.output


def test_transformers_head_refuses_a_pooling_override(checkpoint, Engine):
    """Its own head pools; a pooling_type would be silently ignored, so it is an error."""
    with pytest.raises(ValueError, match="pools by itself"):
        Engine(str(checkpoint("funnel", "classify")), device="cpu", pooler_config={"pooling_type": "MEAN"})


def test_missing_head_weights_are_refused_not_random(checkpoint, Engine, tmp_path):
    """transformers fills a weight the checkpoint lacks with random values; the BERT pooler is
    part of the classifier head, so a checkpoint without it must not load."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(checkpoint("bert", "classify"), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    tensors = {k: v for k, v in load_file(str(weights)).items() if "pooler" not in k}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="pooler.dense"):
        Engine(str(tmp_path / "m"), device="cpu")
