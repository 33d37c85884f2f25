"""`poolworker models PATH` prints the architecture, the supported tasks and the pooling type."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run_models(path) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    script = REPO / ".venv" / "bin" / "poolworker"
    if script.exists():
        cmd = [str(script), "models", str(path)]
    else:
        cmd = [sys.executable, "-c", "from poolworker.cli import app; app()", "models", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=str(REPO), check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def test_cli_models_minilm(minilm_path):
    out = _run_models(minilm_path)
    assert "BertModel" in out
    assert "embed" in out
    assert "MEAN" in out.upper()


def test_cli_models_seq_classifier(seq_cls_path):
    out = _run_models(seq_cls_path)
    assert "BertForSequenceClassification" in out
    assert "classify" in out


def test_cli_models_decoder(decoder_left_path):
    out = _run_models(decoder_left_path)
    assert "Qwen2Model" in out
    assert "embed" in out
    assert "LAST" in out.upper()


def test_cli_models_colbert(colbert_path):
    out = _run_models(colbert_path)
    assert "BertModel" in out
    assert "token_embed" in out


def test_cli_models_bad_path(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-c", "from poolworker.cli import app; app()", "models", str(tmp_path / "nope")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=str(REPO), check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
