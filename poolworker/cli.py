"""Command line: ``poolworker models`` describes a model; ``poolworker dev`` runs the embedded demo."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Serve pooling models from streams.")

DEMO_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "docstrings.jsonl"
_FALLBACK_DOCS = [
    "Kafka topics carry the requests; a consumer group spreads partitions over workers.",
    "Sentence embeddings map texts to vectors whose cosine similarity tracks meaning.",
    "Redis caches results so repeated documents are answered without a forward pass.",
    "Micro-batching groups requests under a token budget to keep the model busy.",
]


@app.command()
def models(
    model: Annotated[str, typer.Argument(help="Local folder, bundled name (all-MiniLM-L6-v2) or HF cache name.")],
    convert: Annotated[str | None, typer.Option(help="Override conversion: embed or classify.")] = None,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow the model's own code to run.")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="Allow pickled (.bin) weights.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a model's architecture, supported tasks and resolved pooler config."""
    from poolworker import Engine

    try:
        info = Engine(model, convert=convert, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle).describe()
    except (ValueError, TypeError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    width = max(len(k) for k in info)
    for key, value in info.items():
        shown = json.dumps(value) if isinstance(value, (dict, list)) else value
        typer.echo(f"{key:<{width}}  {shown}")


def _demo_texts(limit: int) -> list[str]:
    if DEMO_CORPUS.is_file():
        with DEMO_CORPUS.open(encoding="utf-8") as f:
            return [json.loads(line)["text"] for line, _ in zip(f, range(limit))]
    return _FALLBACK_DOCS * (limit // len(_FALLBACK_DOCS))


@app.command()
def dev(
    model: Annotated[str, typer.Option(help="Model to serve.")] = "all-MiniLM-L6-v2",
    documents: Annotated[int, typer.Option(help="Demo documents to embed.")] = 1000,
) -> None:
    """Embedded defaults: the bundled model over a demo document set, with throughput.

    The Kafka worker (``poolworker run``) is not built yet; until it is, this runs the engine
    offline so ``make run`` shows the model working end to end."""
    from poolworker import Engine

    engine = Engine(model)
    texts = _demo_texts(documents)
    typer.echo(f"model {model}: {engine.model.architecture}, tasks {list(engine.supported_tasks)}, device {engine.model.device}")
    start = time.perf_counter()
    out = engine.embed(texts, truncate_prompt_tokens=-1, use_tqdm=True)
    elapsed = time.perf_counter() - start
    tokens = sum(o.num_prompt_tokens for o in out)
    for text, o in list(zip(texts, out))[:3]:
        preview = " ".join(text.split())[:60]
        typer.echo(f"  {preview!r:64} -> [{', '.join(f'{v:+.4f}' for v in o.outputs.embedding[:4])}, ...] ({len(o.outputs.embedding)} dims)")
    typer.echo(f"embedded {len(out)} documents, {tokens} tokens in {elapsed:.1f}s: {len(out) / elapsed:.0f} docs/s, {tokens / elapsed:.0f} tokens/s")
    best = engine.rerank("how do I open a file", texts[:50], top_n=1, truncate_prompt_tokens=-1)[0]
    typer.echo(f"best of the first 50 documents for 'how do I open a file': #{best.index} score {best.relevance_score:.3f}")


if __name__ == "__main__":
    app()
