"""Run every RecBole general / sequential / context-aware model for one epoch through our CLI.

    python benchmarks/model_sweep.py [--out benchmarks/results/model_sweep] [--models A,B] [--jobs 1]
    python benchmarks/model_sweep.py --from_json     # <out>.md again from <out>.json

Each model runs in its own process on the tiny test dataset (tests/data/tiny, 40 ml-100k users)
with RecBole's default protocol for its type (context-aware models: ``--eval_protocol=ctr``); writes ``<out>.json`` (one record per model) and
``<out>.md`` (the table README links to), and prints the counts.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from recbole_ext.tables import markdown_table

REPO = Path(__file__).resolve().parent.parent
KINDS = ("general_recommender", "sequential_recommender", "context_aware_recommender")


def recbole_models() -> list[tuple[str, str]]:
    """(kind, ClassName) of every model module RecBole ships in the three kinds."""
    import recbole

    root = Path(recbole.__file__).parent / "model"
    found = []
    for kind in KINDS:
        for path in sorted((root / kind).glob("*.py")):
            if path.stem == "__init__":
                continue
            module = importlib.import_module(f"recbole.model.{kind}.{path.stem}")
            names = [
                n
                for n, obj in vars(module).items()
                if n.lower() == path.stem and isinstance(obj, type)
            ]
            if names:
                found.append((kind, names[0]))
    return found


# Settings a model needs beyond RecBole's defaults to run one epoch on the tiny dataset.
EXTRA_ARGS = {
    "context_aware_recommender": ["--eval_protocol=ctr"],  # a label: rating >= 4
    # its pre-training stage (default 500 epochs) saves every save_step epochs; the fine-tune
    # stage from that file is tested in tests/test_runs.py
    "S3Rec": ["--pretrain_epochs=1", "--save_step=1"],
    # DGCF samples max(users, items) / n_batches distinct users per batch: tiny (40 users, 577
    # items) needs many small batches
    "DGCF": ["--train_batch_size=32"],
}


def run_one(kind: str, model: str, workdir: Path, timeout: int) -> dict:
    out = workdir / f"{model}.json"
    cmd = [
        sys.executable,
        str(REPO / "run_recbole_ext.py"),
        f"--model={model}",
        "--dataset=tiny",
        f"--config_files={REPO / 'tests/data/tiny.yaml'}",
        f"--data_path={REPO / 'tests/data'}",
        f"--checkpoint_dir={workdir / 'saved'}",
        f"--output={out}",
        *EXTRA_ARGS.get(kind, []),
        *EXTRA_ARGS.get(model, []),
    ]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir)
        seconds = time.perf_counter() - start
    except subprocess.TimeoutExpired:
        return {"model": model, "ok": False, "seconds": timeout, "reason": f"timeout {timeout}s"}
    if done.returncode == 0 and out.is_file():
        result = json.loads(out.read_text())
        return {
            "model": model,
            "ok": True,
            "seconds": round(seconds, 1),
            "test_result": result["test_result"],
        }
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    error = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else "")
    return {"model": model, "ok": False, "seconds": round(seconds, 1), "reason": error[-300:]}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/model_sweep"))
    parser.add_argument(
        "--models", default=None, help="comma-separated subset (merged into an existing --out)"
    )
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument(
        "--from_json", action="store_true", help="rewrite <out>.md from <out>.json (no runs)"
    )
    args = parser.parse_args()
    if args.from_json:
        write_table(json.loads(Path(args.out).with_suffix(".json").read_text()), Path(args.out))
        return

    models = recbole_models()
    if args.models:
        wanted = set(args.models.split(","))
        models = [(k, m) for k, m in models if m in wanted]
    workdir = Path(tempfile.mkdtemp(prefix="sweep-"))
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(
            pool.map(
                lambda km: {"kind": km[0], **run_one(km[0], km[1], workdir, args.timeout)}, models
            )
        )
    for row in rows:
        print(
            f"{row['kind']:28s} {row['model']:14s} {'ok' if row['ok'] else 'FAIL'} "
            f"{row['seconds']:7.1f}s {row.get('reason', '')}",
            flush=True,
        )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.models and out.with_suffix(".json").is_file():  # rerun of a subset: merge
        fresh = {r["model"]: r for r in rows}
        previous = json.loads(out.with_suffix(".json").read_text())
        rows = [fresh.pop(r["model"], r) for r in previous] + list(fresh.values())
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    write_table(rows, out)


def write_table(rows: list[dict], out: Path) -> None:
    """``<out>.md``: one line per model (kind, status, seconds, first test metric or the reason
    it failed)."""
    table = []
    for r in rows:
        if r["ok"]:
            if r["test_result"]:
                metric, value = next(iter(r["test_result"].items()))
                detail = f"{metric} = {value}"
            else:
                detail = "pre-training stage (no test metrics by design)"
        else:
            detail = r["reason"].replace("|", "\\|")
        status = "ok" if r["ok"] else "**fails**"
        table.append([r["kind"].split("_")[0], r["model"], status, r["seconds"], detail])
    ok = sum(r["ok"] for r in rows)
    lines = [
        f"{ok} of {len(rows)} RecBole models ran one epoch through `run_recbole_ext.py` on the "
        "tiny dataset (`python benchmarks/model_sweep.py`).",
        "",
        markdown_table(table, ["kind", "model", "status", "seconds", "first test metric / reason"]),
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"{ok}/{len(rows)} ok; wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
