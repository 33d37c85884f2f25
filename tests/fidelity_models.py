"""Tiny random checkpoints of every family the fidelity matrix covers (tests/test_fidelity.py).

Each family is a ``Family``: a config class with a 2-layer, hidden-64 configuration, the class
for each task, and the tokenizer it takes (MiniLM's WordPiece where the config allows, else the
byte-level tokenizer of ``builders``). Weights are the family's own random init plus seeded
noise, so that every head layer moves the output well above the tolerance: a missing dense +
activation shows up as ~1e-1, not as 1e-6 against a near-uniform softmax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import builders
import torch
import transformers

NUM_LABELS = 3
LABELS = {0: "neg", 1: "neu", 2: "pos"}
NOISE_STD = 0.05

_ENCODER = {"vocab_size": 30522, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
_DECODER = {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
    "max_position_embeddings": 512, "tie_word_embeddings": False,
}


@dataclass(frozen=True)
class Family:
    """One model family: ``prefix`` names its classes (``{prefix}Model``, ``{prefix}ForSequence
    Classification``, ...), ``config`` its tiny configuration."""

    name: str
    prefix: str
    config: dict = field(default_factory=dict)
    tokenizer: str = "minilm"  # or "bytes"
    config_class: str | None = None  # when not f"{prefix}Config"
    base_class: str | None = None  # the embedding backbone, when not f"{prefix}Model"

    @property
    def is_decoder(self) -> bool:
        return self.tokenizer == "bytes"

    def cls(self, task: str):
        names = {
            "embed": self.base_class or f"{self.prefix}Model",
            "classify": f"{self.prefix}ForSequenceClassification",
            "token_classify": f"{self.prefix}ForTokenClassification",
            "causal_lm": f"{self.prefix}ForCausalLM",
        }
        return getattr(transformers, names[task])


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("bert", "Bert", dict(_ENCODER, max_position_embeddings=512)),
    Family("roberta", "Roberta", dict(_ENCODER, max_position_embeddings=514, pad_token_id=0)),
    Family("xlm-roberta", "XLMRoberta", dict(_ENCODER, max_position_embeddings=514, pad_token_id=0)),
    Family("distilbert", "DistilBert", {"vocab_size": 30522, "dim": 64, "n_layers": 2, "n_heads": 4, "hidden_dim": 128}),
    Family("albert", "Albert", dict(_ENCODER, embedding_size=32)),
    Family("electra", "Electra", dict(_ENCODER, embedding_size=32)),
    # DeBERTa-v3's layout: relative attention with buckets, no absolute positions.
    Family("deberta-v2", "DebertaV2", dict(
        _ENCODER, relative_attention=True, position_buckets=16, max_relative_positions=-1, norm_rel_ebd="layer_norm",
        share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False, pooler_hidden_act="gelu",
    )),
    # A local window smaller than the longer texts, so local and global layers both matter.
    Family("modernbert-cls", "ModernBert", dict(
        _ENCODER, pad_token_id=0, local_attention=8, global_attn_every_n_layers=2, classifier_pooling="cls",
    )),
    Family("modernbert-mean", "ModernBert", dict(
        _ENCODER, pad_token_id=0, local_attention=8, global_attn_every_n_layers=2, classifier_pooling="mean",
    )),
    Family("mpnet", "MPNet", dict(_ENCODER, pad_token_id=0)),
    Family("t5", "T5", {"vocab_size": 30522, "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4, "pad_token_id": 0},
           base_class="T5EncoderModel"),
    Family("gemma3", "Gemma3Text", dict(
        _DECODER, vocab_size=30522, head_dim=16, sliding_window=16, use_bidirectional_attention=True, pad_token_id=0,
    ), config_class="Gemma3TextConfig"),
    Family("qwen2", "Qwen2", dict(_DECODER), tokenizer="bytes"),
    Family("qwen3", "Qwen3", dict(_DECODER, head_dim=16), tokenizer="bytes"),
    Family("llama", "Llama", dict(_DECODER), tokenizer="bytes"),
    Family("mistral", "Mistral", dict(_DECODER, sliding_window=None), tokenizer="bytes"),
    Family("funnel", "Funnel", {"vocab_size": 30522, "block_sizes": [1, 1], "num_decoder_layers": 1, "d_model": 64, "n_head": 4,
                                    "d_head": 16, "d_inner": 128}),
    # Not on the allow-list: must be refused, whatever its head looks like.
    Family("megatron-bert", "MegatronBert", dict(_ENCODER, max_position_embeddings=512)),
]}


def _byte_bpe(words: tuple[str, ...], specials: list[str]):
    """A byte-level BPE model (the 256 byte symbols) with merges that make each of ``words`` one
    token, built letter by letter, and ``specials`` added as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {sym: i for i, sym in enumerate(specials)}
    for sym in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[sym] = len(vocab)
    merges = []
    for word in words:
        for end in range(2, len(word) + 1):
            merges.append((word[: end - 1], word[end - 1]))
            vocab.setdefault(word[:end], len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return tok


def word_tokenizer(words: tuple[str, ...]):
    """``builders.byte_level_tokenizer`` plus merges that make each of ``words`` one token (the
    "no" / "yes" a reranker's score is read from)."""
    from transformers import PreTrainedTokenizerFast

    tok = _byte_bpe(words, [])
    tok.add_special_tokens([builders.EOS_TOKEN])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=builders.EOS_TOKEN, pad_token=builders.EOS_TOKEN,
                                   padding_side="left", model_max_length=512)


def xlmr_tokenizer():
    """An XLM-R-shaped tokenizer: <s> 0, <pad> 1, </s> 2, <unk> 3, every text framed as
    ``<s> ... </s>`` (what bge-m3's tokenizer does), byte-level BPE in between."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _byte_bpe(("kafka", "the", "log"), ["<s>", "<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", cls_token="<s>", eos_token="</s>",
                                   sep_token="</s>", pad_token="<pad>", unk_token="<unk>", model_max_length=512)


def _config(family: Family, task: str, tokenizer) -> transformers.PretrainedConfig:
    cls = getattr(transformers, family.config_class or f"{family.prefix}Config")
    extra: dict = {}
    if family.is_decoder:
        pad = tokenizer.convert_tokens_to_ids(builders.EOS_TOKEN)
        extra = {"vocab_size": len(tokenizer), "pad_token_id": pad, "eos_token_id": pad, "bos_token_id": pad}
    if task not in ("embed", "causal_lm"):
        labels = LABELS if task == "classify" else {i: f"tag_{i}" for i in range(NUM_LABELS)}
        extra.update(num_labels=NUM_LABELS, id2label=labels, label2id={v: k for k, v in labels.items()})
    return cls(**family.config, **extra)


@torch.no_grad()
def _perturb(model: torch.nn.Module, seed: int) -> None:
    gen = builders._gen(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=gen) * NOISE_STD)


def build(family: Family, task: str, out: Path, seed: int = 7, tokenizer=None, **config_changes) -> Path:
    """``family``'s ``task`` model (embed: the backbone; classify / token_classify: the head
    model; causal_lm: the generative model) saved with its tokenizer into ``out``. Decoders take
    ``tokenizer`` when given, else the byte-level one; ``config_changes`` go into the config."""
    out.mkdir(parents=True, exist_ok=True)
    if family.is_decoder and tokenizer is None:
        tokenizer = builders.byte_level_tokenizer("left")
    config = _config(family, task, tokenizer)
    for key, value in config_changes.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model_cls = family.cls(task)
    model = model_cls(config).eval()
    _perturb(model, seed)
    model.config.architectures = [model_cls.__name__]
    model.save_pretrained(str(out), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    else:
        builders._save_minilm_tokenizer(out)
    return out


def write_st_modules(out: Path, hidden: int, pooling: str, dense_out: int | None = None, seed: int = 3) -> None:
    """Sentence-Transformers files: Transformer → Pooling(``pooling``) → [Dense, no bias] → Normalize."""
    from safetensors.torch import save_file

    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    mode = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "lasttoken": "pooling_mode_lasttoken"}[pooling]
    builders._write_json(out / "1_Pooling" / "config.json", {"word_embedding_dimension": hidden, mode: True})
    if dense_out is not None:
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
        builders._write_json(out / "2_Dense" / "config.json", {
            "in_features": hidden, "out_features": dense_out, "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
        })
        weight = torch.randn(dense_out, hidden, generator=builders._gen(seed)) * hidden**-0.5
        save_file({"linear.weight": weight.contiguous()}, str(out / "2_Dense" / "model.safetensors"))
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": f"{len(modules)}_Normalize",
                    "type": "sentence_transformers.models.Normalize"})
    builders._write_json(out / "modules.json", modules)
    builders._write_json(out / "sentence_bert_config.json", {"max_seq_length": 256, "do_lower_case": False})
