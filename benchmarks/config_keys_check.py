"""Check the known-key derivation of ``recbole_ext.config_checks`` against what code really reads.

    python benchmarks/config_keys_check.py [--models A,B] [--out benchmarks/results/config_keys]

For every model of ``benchmarks/model_sweep.py`` (RecBole's general, sequential and
context-aware models), with the sweep's own arguments on the tiny dataset:

1. the ``Config`` is created (the key checks run): no model may be refused with an unknown-key
   or credential error;
2. the dataset, dataloaders, model and trainer are built with a ``Config`` that records every key
   the code looks up and does not find (``config["key"]`` returning ``None``, ``"key" in
   config``, ``config.key``, ``final_config_dict.get("key")``): keys a model reads without a yaml
   declaring them. Each must be among the keys the check derives from the sources, or a user
   setting it would be refused.

Writes ``<out>.json`` (one record per model) and prints the counts; exit status 1 if any model
is refused or reads a key the derivation misses.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class RecordingDict(dict):
    """A config's final dict that records the keys looked up and missing (not Python's own
    ``__deepcopy__``-style probes through ``Config.__getattr__``)."""

    missing: set

    def _record(self, key):
        if isinstance(key, str) and not key.startswith("__") and key not in self.keys():
            self.missing.add(key)

    def get(self, key, default=None):
        self._record(key)
        return super().get(key, default)

    def __contains__(self, key):
        self._record(key)
        return super().__contains__(key)


def check_model(kind: str, model: str, workdir: Path) -> dict:
    import torch
    from model_sweep import EXTRA_ARGS
    from recbole.utils import init_logger

    from recbole_ext.config import Config
    from recbole_ext.config_checks import CredentialError, UnknownKeyError, known_keys
    from recbole_ext.quick_start import build
    from recbole_ext.utils import get_trainer

    args = [
        f"--data_path={REPO / 'tests/data'}",
        f"--checkpoint_dir={workdir / 'saved'}",
        *EXTRA_ARGS.get(kind, []),
        *EXTRA_ARGS.get(model, []),
    ]
    try:
        config = Config(model, "tiny", [str(REPO / "tests/data/tiny.yaml")], None, args)
    except (UnknownKeyError, CredentialError) as err:
        return {"model": model, "refused": str(err)}
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
    known = known_keys(set(config.internal_config_dict), config.model_class, trainer_class)
    recording = RecordingDict(config.final_config_dict)
    recording.missing = set()
    config.final_config_dict = recording
    init_logger(config)
    try:
        torch.manual_seed(0)
        _, model_obj, *_ = build(config)
        trainer_class(config, model_obj)
        built = None
    except Exception as err:  # noqa: BLE001 - reported, the check goes on with the next model
        built = f"{type(err).__name__}: {err}"[:300]
    read = sorted(recording.missing)
    return {
        "model": model,
        "refused": None,
        "build_error": built,
        "read_undeclared": read,
        "missed": [k for k in read if k not in known],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=None, help="comma-separated subset")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/config_keys"))
    args = parser.parse_args()

    import torch
    from model_sweep import recbole_models

    torch.set_num_threads(1)
    models = recbole_models()
    if args.models:
        models = [(k, m) for k, m in models if m in set(args.models.split(","))]
    workdir = Path(tempfile.mkdtemp(prefix="config-keys-"))
    import os

    os.chdir(workdir)  # RecBole writes log/ to the working directory
    rows = []
    for kind, model in models:
        row = check_model(kind, model, workdir)
        rows.append(row)
        status = (
            "REFUSED"
            if row["refused"]
            else ("MISSED " + ",".join(row["missed"]) if row["missed"] else "ok")
        )
        print(
            f"{model:14s} {status:10s} undeclared reads: {row.get('read_undeclared')} "
            f"{row.get('build_error') or ''}",
            flush=True,
        )
    out = Path(args.out).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    refused = [r["model"] for r in rows if r["refused"]]
    missed = {r["model"]: r["missed"] for r in rows if r.get("missed")}
    built = sum(not r["refused"] and not r["build_error"] for r in rows)
    print(
        f"{len(rows)} models: {len(refused)} refused {refused}; {built} built (dataset, model, "
        f"trainer); keys read but not derived: {missed or 'none'}; wrote {out}"
    )
    sys.exit(1 if refused or missed else 0)


if __name__ == "__main__":
    main()
