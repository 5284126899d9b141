"""ExpCTR speed on this machine: generation tokens/s, one PPO update, LC scoring, each stage.

    python benchmarks/expctr_speed.py [--batch 8] [--response-length 24] [--stages]
    python benchmarks/expctr_speed.py --device cuda --lm DIR   # a GPU machine, an HF model dir

Prints (one run each, wall-clock seconds, torch threads as set by ``expctr_lm_threads``):
- load of the local LM (SmolLM2-135M-Instruct GGUF, dequantised to float32);
- batched sampled generation of ``--batch`` explanation prompts (tokens/s = generated tokens of all
  rows / seconds; rows stop at <|im_end|>);
- one PPO update (``LoRAPolicy.step``: policy + reference + value forward, one update epoch,
  minibatch 4) on that rollout, with the batch size and the mean response length stated;
- one Yes/No scoring batch of the LC reward model (``LoRAPolicy.yes_no_scores``: frozen base,
  adapters off);
- with ``--stages``: the tiny preset end to end (``--dataset``, default tests/data/tiny), each
  stage's time and the test metrics (ExpCTR-Aug, ``llm_*`` ExpCTR-LLM, ``icl_*`` ICL).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from recbole_ext.config import Config
from recbole_ext.config_sections import yaml_section
from recbole_ext.llm import LoRASettings
from recbole_ext.llm.local_lm import chat_prompt, load_local_lm
from recbole_ext.llm.prompts import (
    ExpCTRPromptWords,
    expctr_ctr_messages,
    expctr_explanation_messages,
)
from recbole_ext.quick_start import build
from recbole_ext.rl.policy import LoRAPolicy
from recbole_ext.rl.ppo import PPOConfig
from recbole_ext.trainer.expctr import ExpCTRTrainer

REPO = Path(__file__).resolve().parents[1]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def micro(batch: int, response_length: int, threads: int, device: str, lm: str | None) -> None:
    start = time.perf_counter()
    model, tokenizer = load_local_lm(lm, num_threads=threads, device=device)
    print(
        f"load LM: {time.perf_counter() - start:.1f} s (device {device}, torch threads "
        f"{torch.get_num_threads()})"
    )
    config = yaml_section(
        PPOConfig,
        batch_size=batch,
        mini_batch_size=min(4, batch),
        response_length=response_length,
        update_epochs=1,
    )
    lora = yaml_section(LoRASettings)
    policy = LoRAPolicy((model, tokenizer), lora, config, seed=0, device=device)
    domain = ExpCTRPromptWords.named("movie")
    liked = [
        "Toy Story (1995) Animation, Children's, Comedy",
        "Heat (1995) Action, Crime, Thriller",
    ]
    prompts = [
        expctr_explanation_messages(
            liked, ["Copycat (1995) Crime, Drama"], f"Movie number {i} (1996)", domain
        )
        for i in range(batch)
    ]
    prompt_tokens = len(tokenizer(chat_prompt(tokenizer, prompts[0]))["input_ids"])
    torch.manual_seed(0)
    policy.generate(prompts[:1])  # warm-up (kernels, caches)
    _sync(device)
    start = time.perf_counter()
    rollout = policy.generate(prompts)
    _sync(device)
    seconds = time.perf_counter() - start
    tokens = float(rollout.response_mask.sum())
    print(
        f"generation: batch {batch}, prompt ~{prompt_tokens} tokens, max {response_length} new: "
        f"{tokens:.0f} tokens in {seconds:.2f} s = {tokens / seconds:.1f} tokens/s "
        f"({rollout.response_length} steps, {batch * rollout.response_length / seconds:.1f} "
        "row-steps/s)"
    )
    start = time.perf_counter()
    stats = policy.step(rollout, [0.5] * batch)
    _sync(device)
    print(
        f"one PPO update: batch {batch}, mean response {stats['response_tokens']:.1f} tokens "
        f"(padded {rollout.response_length}), minibatch {config.mini_batch_size}, "
        f"{config.update_epochs} epoch: {time.perf_counter() - start:.2f} s"
    )
    messages = [expctr_ctr_messages(t, "Movie (1996)", domain) for t in rollout.texts]
    start = time.perf_counter()
    policy.yes_no_scores(messages)
    _sync(device)
    print(f"LC Yes/No scoring: batch {batch}: {time.perf_counter() - start:.2f} s")


def stages(dataset: str) -> None:
    """The tiny preset end to end (RecBole build, ExpCTRTrainer.fit, test evaluation)."""
    data = REPO / "tests" / "data"
    files = [str(data / "tiny.yaml")] if dataset == "tiny" else None
    with tempfile.TemporaryDirectory() as tmp:
        values = {"checkpoint_dir": f"{tmp}/saved", "epochs": 20, "state": "WARNING"}
        if dataset == "tiny":
            values["data_path"] = str(data)
        config = Config("ExpCTR", dataset, files, values)
        start = time.perf_counter()
        _, model, train, valid, test = build(config)
        trainer = ExpCTRTrainer(config, model)
        trainer.fit(train, valid)
        result = trainer.evaluate(test, load_best_model=True)
        total = time.perf_counter() - start
    print(
        f"tiny preset on {dataset} ({len(train.dataset)}/{len(valid.dataset)}/"
        f"{len(test.dataset)} samples), total {total:.1f} s"
    )
    for stage, seconds in trainer.stage_seconds.items():
        print(f"  {stage}: {seconds:.1f} s")
    print({k: round(float(v), 4) for k, v in result.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--response-length", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu | cuda (micro-benchmarks only)")
    parser.add_argument("--lm", default=None, help="HF dir or GGUF; default: packaged SmolLM2")
    parser.add_argument("--stages", action="store_true", help="also time the tiny preset's stages")
    parser.add_argument("--dataset", default="tiny", help="tiny (tests/data/tiny) or ml-100k")
    args = parser.parse_args()
    micro(args.batch, args.response_length, args.threads, args.device, args.lm)
    if args.stages:
        stages(args.dataset)


if __name__ == "__main__":
    main()
