"""The adapter `vlmgate finetune` exports, hot-loaded into the real vLLM engine, answers exactly like
transformers + peft (greedy), on held-out examples. Uses the session's one engine (fixture demo_engine_url)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.integration.test_finetune_train import write_dataset

pytestmark = pytest.mark.engine


def test_vllm_serves_the_adapter_like_peft(served_model_dir, demo_engine_url, tmp_path):
    from vlmgate.finetune.config import FinetuneConfig
    from vlmgate.finetune.data import read_jsonl
    from vlmgate.finetune.evaluate import generate_answers
    from vlmgate.finetune.model import load_for_inference, load_processor
    from vlmgate.finetune.run import run_training

    train, held_out = write_dataset(tmp_path, 16), write_dataset(tmp_path, 6, "eval")
    cfg = FinetuneConfig(base_model=str(served_model_dir), train_data=train, eval_data=held_out,
                         output_dir=str(tmp_path / "run"), method="qlora", rank=8, alpha=16, learning_rate=2e-3,
                         batch_size=4, max_steps=120, eval_every_steps=0, save_every_steps=0,
                         max_length=512)  # fmt: skip
    adapter = run_training(cfg, evaluate=False).adapter_dir
    examples, _ = read_jsonl(held_out)

    # Enough steps that the adapter's greedy choices are clear: after 8 steps at 5e-3 the top two tokens were
    # within 0.02 nats on the demo model, where bf16 rounding decides and transformers in bf16 and in fp32
    # disagreed with each other; that compares noise, not the engine's LoRA. After 120 steps the margins were
    # >= 0.5 nats.
    # transformers + peft, in the dtype the engine computes in (the checkpoint's)
    dtype = json.loads((served_model_dir / "config.json").read_text()).get("dtype", "float32")
    processor = load_processor(served_model_dir)
    model = load_for_inference(served_model_dir, adapter, dtype=dtype)
    expected = generate_answers(model, processor, examples, max_new_tokens=8)
    with model.disable_adapter():
        base = generate_answers(model, processor, examples, max_new_tokens=8)
    assert expected != base  # the adapter changes answers, so agreement below is not the base agreeing with itself

    name = "finetune-parity"
    with httpx.Client(base_url=demo_engine_url, timeout=120) as client:
        loaded = client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(adapter)})
        assert loaded.status_code == 200, loaded.text
        try:
            served = []
            for example in examples:
                reply = client.post("/v1/chat/completions", json={
                    "model": name, "messages": example.to_openai(), "temperature": 0, "max_tokens": 8})  # fmt: skip
                assert reply.status_code == 200, reply.text
                served.append(reply.json()["choices"][0]["message"]["content"].strip())
        finally:
            client.post("/v1/unload_lora_adapter", json={"lora_name": name})
    assert served == expected
