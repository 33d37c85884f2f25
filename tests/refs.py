"""Reference computations with transformers / sentence-transformers, independent of the engine."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

ATOL = 1e-5


def as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu()
    return torch.tensor(x, dtype=torch.float32)


def embedding(out) -> torch.Tensor:
    return as_tensor(out.outputs.embedding)


def data(out) -> torch.Tensor:
    return as_tensor(out.outputs.data)


def assert_close(actual, expected, atol: float = ATOL, what: str = "") -> None:
    actual = as_tensor(actual)
    expected = as_tensor(expected)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert diff <= atol, f"{what}: max abs diff {diff:.3e} > {atol:.0e}"


def assert_clean_error(fn, *needles: str, types=(ValueError, TypeError)):
    """``fn()`` must raise ValueError/TypeError (never IndexError/RuntimeError/...) naming ``needles``."""
    try:
        fn()
    except types as exc:
        msg = str(exc)
        low = msg.lower()
        for needle in needles:
            assert needle.lower() in low, f"error message {msg!r} does not mention {needle!r}"
        return exc
    except BaseException as exc:  # noqa: BLE001 - any other type is a failure
        pytest.fail(f"expected ValueError/TypeError, got {type(exc).__name__}: {exc}")
    pytest.fail("expected ValueError/TypeError, nothing was raised")


# ----------------------------------------------------------------------------------------------
# Encoders
# ----------------------------------------------------------------------------------------------
def _bert_inputs(ids: list[int]):
    input_ids = torch.tensor([ids], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "token_type_ids": torch.zeros_like(input_ids)}


@torch.no_grad()
def bert_hidden(model, ids: list[int]) -> torch.Tensor:
    """Last hidden state [num_tokens, hidden] of one unpadded sequence."""
    return model(**_bert_inputs(ids)).last_hidden_state[0].float()


@torch.no_grad()
def mean_pool(model, ids: list[int]) -> torch.Tensor:
    return bert_hidden(model, ids).mean(dim=0)


def minilm_embed(model, ids: list[int]) -> torch.Tensor:
    return F.normalize(mean_pool(model, ids), dim=-1)


# ----------------------------------------------------------------------------------------------
# Decoders
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def decoder_hidden_single(model, ids: list[int]) -> torch.Tensor:
    """Last hidden state [num_tokens, hidden] of one sequence, no padding."""
    input_ids = torch.tensor([ids], dtype=torch.long)
    out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    return out.last_hidden_state[0].float()


@torch.no_grad()
def decoder_last_left_padded(model, batch_ids: list[list[int]], pad_id: int) -> torch.Tensor:
    """Hidden state at index -1 of a left-padded batch with position_ids = cumsum(mask) - 1."""
    longest = max(len(x) for x in batch_ids)
    input_ids = torch.full((len(batch_ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), longest), dtype=torch.long)
    for i, ids in enumerate(batch_ids):
        input_ids[i, longest - len(ids) :] = torch.tensor(ids)
        mask[i, longest - len(ids) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids)
    return out.last_hidden_state[:, -1].float()
