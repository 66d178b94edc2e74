"""The `vlmgate` command: one entry point whose subcommands each delegate to their package.

Run as: vlmgate --help, vlmgate serve --help, ...

Subcommand modules are imported only when used, so `vlmgate --help` and the gateway start quickly without
importing torch. Each module exposes `main(argv, prog) -> int`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from vlmgate import __version__

# name -> (module, one-line help). Order is the order shown in --help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("vlmgate.serve.cli", "start the OpenAI-compatible gateway and its engine (vLLM by default)"),
    "adapters": ("vlmgate.serve.adapters.cli", "register, list, show and remove LoRA adapters on a running gateway"),
    "finetune": ("vlmgate.finetune.cli", "validate data, train (Q)LoRA adapters, evaluate them against the base"),
    "demo": (
        "vlmgate.finetune.demo.cli",
        "build the tiny test VLM; generate data, train and evaluate the demo VLM",
    ),
    "quantize": ("vlmgate.quantize.cli", "quantize a base model to INT4 (W4A16) and measure what it costs"),
    "ui": ("vlmgate.ui.cli", "start the Gradio chat demo against a gateway"),
    "loadtest": ("vlmgate.loadtest.cli", "load-test an OpenAI-compatible endpoint against latency SLOs"),
    "bench": ("vlmgate.serve.bench", "measure the gateway's own overhead against calling the engine directly"),
    "bench-adapters": ("vlmgate.serve.bench_adapters", "measure adapter hot-load vs engine restart, mix vs base"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {name: spec for name, spec in SUBCOMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


def _usage() -> str:
    lines = [
        f"vlmgate {__version__}: serve vision-language models with hot-swapped LoRA adapters.",
        "",
        "usage: vlmgate <command> [options]    (vlmgate <command> --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in _available().items()]
    lines += ["", "Quick start: vlmgate serve   then open http://127.0.0.1:8000/docs"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    commands = _available()
    if argv[0] not in commands:
        print(f"vlmgate: unknown command {argv[0]!r}.\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(commands[argv[0]][0])
    return int(module.main(argv[1:], prog=f"vlmgate {argv[0]}") or 0)
