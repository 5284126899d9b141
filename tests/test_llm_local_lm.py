"""Local trainable LM: SmolLM2 GGUF in transformers, tokenizer fix, left padding, LoRA behaviour."""

import copy

import pytest
import torch

from recbole_ext.config_sections import yaml_section
from recbole_ext.llm import LoRASettings
from recbole_ext.llm.local_lm import add_lora, generate_texts, reference_mode, split_model_path
from tests.llm_fixtures import smollm2


def test_split_model_path(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    assert split_model_path(str(gguf)) == (str(tmp_path), "m.gguf")
    assert split_model_path(str(tmp_path)) == (str(tmp_path), None)


def test_gguf_loads_dequantized_with_chat_end_as_eos_and_left_padding():
    model, tokenizer = smollm2()
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.padding_side == "left"
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    # dense float32 parameters: trainable and savable like any HF model
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert torch.get_num_threads() == 1


def test_left_padded_batch_generation_equals_single_generation():
    model, tokenizer = smollm2()
    short = [{"role": "user", "content": "Say hi."}]
    long = [{"role": "user", "content": "Write one sentence about the sea and the sky at night."}]
    batched = generate_texts(model, tokenizer, [short, long], max_new_tokens=12)
    alone = generate_texts(model, tokenizer, [short], max_new_tokens=12)
    assert batched[0] == alone[0] and batched[0].strip()
    assert "<|im_end|>" not in batched[0]  # generation stops at / strips the chat end token


def test_lora_step_changes_adapters_only_and_reference_equals_base(tmp_path):
    base, tokenizer = smollm2()
    model = copy.deepcopy(base)  # the cached model stays untouched
    inputs = tokenizer(
        ["A short one.", "A somewhat longer training text."], return_tensors="pt", padding=True
    )
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    with torch.no_grad():
        base_logits = model(**inputs).logits  # (B, T, V)

    policy = add_lora(
        model, yaml_section(LoRASettings, r=4, alpha=8, target_modules=("q_proj", "v_proj"))
    )
    trainable = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 4 * model.config.num_hidden_layers  # A and B of q_proj, v_proj

    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0
    )
    policy.train()
    loss = policy(**inputs, labels=labels).loss
    loss.backward()
    optimizer.step()
    policy.eval()

    params = dict(policy.named_parameters())
    # lora_B starts at zero, so the first step moves every B (A's gradient is B^T(...) = 0)
    changed = [n for n in trainable if not torch.equal(params[n], trainable[n])]
    assert changed and all("lora_B" in n for n in changed)
    assert len(changed) == 2 * model.config.num_hidden_layers
    for name, before in frozen.items():
        torch.testing.assert_close(params[name], before, rtol=0, atol=0)

    with reference_mode(policy):
        reference_logits = policy(**inputs).logits
    torch.testing.assert_close(reference_logits, base_logits)
    with torch.no_grad():
        adapted_logits = policy(**inputs).logits
    assert (adapted_logits - base_logits).abs().max() > 1e-4  # the adapters do act

    policy.save_pretrained(tmp_path)  # adapters alone; the base stays the shared GGUF
    assert (tmp_path / "adapter_model.safetensors").stat().st_size < 5_000_000
