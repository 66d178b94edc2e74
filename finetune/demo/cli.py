"""`vlmgate demo`: the project's own tiny VLM, from random weights to the trained demo model.

Run as: vlmgate demo build-tiny DIR
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Build, train and evaluate the project's demo VLM.")
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("build-tiny", help="write a random-weight tiny Qwen2-VL model (seconds, offline)")
    tiny.add_argument("out_dir", help="directory to write the model into")
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default: 0)")
    args = parser.parse_args(argv)
    if args.command == "build-tiny":
        from vlmgate.finetune.tiny_vlm import TinyVLMConfig, build_tiny_vlm

        print(f"tiny Qwen2-VL model written to {build_tiny_vlm(args.out_dir, TinyVLMConfig(seed=args.seed))}")
    return 0
