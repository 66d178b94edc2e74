"""SGLangEngine against a real SGLang on the tiny model: launch, readiness, runtime adapter load/unload, and the
`"model": "<base>:<adapter>"` selection (while a bare adapter name silently serves the base model).

Runs on GPU hosts with SGLang installed (`pip install "sglang[all]==0.5.23"`, here or in an environment named by
VLMGATE_TEST_SGLANG_PYTHON); skipped elsewhere, since SGLang has no CPU build on PyPI.
Run as: python -m pytest tests/integration/test_engine_sglang.py -q
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

# SGLang in this Python, or in its own environment named by VLMGATE_TEST_SGLANG_PYTHON (e.g. /opt/sglang/bin/python).
SGLANG_PYTHON = os.environ.get("VLMGATE_TEST_SGLANG_PYTHON") or None
if SGLANG_PYTHON is None:
    pytest.importorskip("sglang", reason="SGLang has no CPU build on PyPI; runs on GPU hosts")

from vlmgate.serve.config import EngineConfig, LimitsConfig  # noqa: E402 (after the skip)
from vlmgate.serve.engines.sglang import SGLangEngine  # noqa: E402

pytestmark = pytest.mark.engine


def random_adapter(model_dir: Path, out_dir: Path) -> Path:
    """A rank-8 LoRA on the language model with random (non-zero) B, so that it visibly changes greedy output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=8, lora_alpha=64, target_modules=rf".*language_model.*\.({'|'.join(targets)})",
                        init_lora_weights=False)  # fmt: skip
    get_peft_model(model, config).save_pretrained(out_dir)
    return out_dir


async def test_sglang_loads_adapters_at_runtime_and_selects_them_by_base_colon_adapter(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    adapter_dir = random_adapter(tiny_model_dir, tmp_path / "adapter")
    config = EngineConfig(kind="sglang", max_lora_rank=8, max_loras=2, max_model_len=2048, startup_timeout_s=900,
                          gpu_memory_utilization=0.5, python=SGLANG_PYTHON)  # fmt: skip
    engine = SGLangEngine("tiny", str(tiny_model_dir), config, LimitsConfig())
    await engine.start()
    try:
        await engine.load_adapter("rand", str(adapter_dir))
        with httpx.Client(base_url=engine.base_url, timeout=120) as client:
            assert "rand" in {m["id"] for m in client.get("/v1/models").json()["data"]}

            def answer(model: str) -> str:
                body = {"model": model, "messages": [{"role": "user", "content": "colour of the sky?"}],
                        "max_tokens": 8, "temperature": 0}  # fmt: skip
                reply = client.post("/v1/chat/completions", json=body)
                assert reply.status_code == 200, reply.text
                return reply.json()["choices"][0]["message"]["content"]

            base = answer(engine.request_model_name(None))
            with_adapter = answer(engine.request_model_name("rand"))
            assert with_adapter != base
            # The trap the engine's naming avoids: the bare adapter name is accepted and serves the base model.
            assert answer("rand") == base
            metrics = client.get("/metrics").text
            assert SGLangEngine.metric_names["time_to_first_token_seconds"] in metrics
        await engine.unload_adapter("rand")
        with pytest.raises(Exception, match="rand"):
            await engine.unload_adapter("rand")
    finally:
        await engine.stop()
