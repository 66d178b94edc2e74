"""`vlmgate serve`: start the gateway and the engine(s) behind it.

Run as: vlmgate serve                          (the demo model on vLLM, http://127.0.0.1:8000/v1)
        vlmgate serve --model /models/Qwen2-VL-2B-Instruct
        vlmgate serve --engine-url http://gpu-box:8001 --model Qwen/Qwen2-VL-2B-Instruct   (attach)
        vlmgate serve --config deploy/examples/gateway.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vlmgate.serve.config import ConfigError, GatewayConfig, load_config

log = logging.getLogger("vlmgate.serve")

DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "finetune" / "demo" / "vlmgate-demo"
TINY_MODEL_DIR = Path.home() / ".cache" / "vlmgate" / "models" / "vlmgate-tiny"


def default_model_path() -> str:
    """The shipped demo model; if this checkout has none, the tiny random model (built once, offline)."""
    if (DEMO_MODEL_DIR / "config.json").is_file():
        return str(DEMO_MODEL_DIR)
    if not (TINY_MODEL_DIR / "config.json").is_file():
        from vlmgate.finetune.tiny_vlm import build_tiny_vlm

        log.warning(
            "no trained demo model in this checkout; building the tiny random-weight model in %s", TINY_MODEL_DIR
        )
        build_tiny_vlm(TINY_MODEL_DIR)
    return str(TINY_MODEL_DIR)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Start the OpenAI-compatible gateway (and the vLLM engine behind it).",
        epilog="Settings come from defaults < --config YAML < VLMGATE_* environment variables < these flags. "
        "Example request: see README.md (curl and the openai SDK).",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML configuration (several models, limits, engine flags)")
    parser.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default 8000)")
    parser.add_argument("--model", metavar="PATH_OR_ID", help="model directory or Hub id (default: the demo model)")
    parser.add_argument("--name", metavar="ID", help="model id clients use (default: the model directory's name)")
    parser.add_argument("--engine-url", metavar="URL", help="attach to a running vLLM at URL instead of starting one")
    parser.add_argument("--max-model-len", type=int, help="context length given to the engine (default 2048)")
    parser.add_argument("--max-images", type=int, help="most images accepted in one request (default 2)")
    parser.add_argument("--allow-remote-images", action="store_true", default=None, help="accept http(s) image URLs")
    parser.add_argument("--adapter-store", metavar="DIR", help="directory adapters must live in (registry inside)")
    parser.add_argument("--insecure", action="store_true", default=None, help="allow no API keys off loopback")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity")
    parser.add_argument(
        "--ui", nargs="?", const=7860, type=int, metavar="PORT", help="also start the Gradio demo (default port 7860)"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    overrides: dict[str, object] = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "limits.max_images_per_request": args.max_images,
        "limits.allow_remote_images": args.allow_remote_images,
        "adapters.store_dir": args.adapter_store,
        "auth.insecure": args.insecure,
    }
    model_flags = {"name": args.name, "engine.url": args.engine_url, "engine.max_model_len": args.max_model_len}
    if args.model or any(v is not None for v in model_flags.values()):
        model: dict[str, object] = {"path": args.model or None}
        for key, value in model_flags.items():
            if value is not None:
                section, _, field = key.rpartition(".")
                (model.setdefault(section, {}) if section else model)[field] = value  # type: ignore[union-attr]
        overrides["models"] = [model]
    config = load_config(args.config, overrides)
    if not config.models:
        config = load_config(args.config, {**overrides, "models": [{"path": default_model_path()}]})
    return config


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"vlmgate serve: {exc}", file=sys.stderr)
        return 2
    from vlmgate.serve.auth import check_startup

    refusal = check_startup(config.auth, config.host)
    if refusal:
        print(f"vlmgate serve: {refusal}", file=sys.stderr)
        return 2
    from vlmgate.serve.server import run

    return run(config, ui_port=args.ui)
