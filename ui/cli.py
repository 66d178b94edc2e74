"""`vlmgate ui`: serve the Gradio demo against a running gateway.

Run as: vlmgate ui                                   (gateway at http://127.0.0.1:8000, UI on 127.0.0.1:7860)
        vlmgate ui --gateway http://gpu-box:8000 --api-key sk-... --admin-key admin-...
        vlmgate ui --host 0.0.0.0 --port 7860       (reachable from other machines: mind who can use the keys)
"""

from __future__ import annotations

import argparse
import os
import sys


def _default_api_key() -> str | None:
    # `vlmgate serve --ui` starts this command with the gateway's environment: reuse its first inference key.
    if os.environ.get("VLMGATE_API_KEY"):
        return os.environ["VLMGATE_API_KEY"]
    keys = [k.strip() for k in os.environ.get("VLMGATE_API_KEYS", "").split(",") if k.strip()]
    return keys[0] if keys else None


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the Gradio demo (multimodal chat, side-by-side adapter comparison, adapter admin and "
        "live SLO plots) as a client of a running vlmgate gateway.",
        epilog="Keys default to $VLMGATE_API_KEY (else the first of $VLMGATE_API_KEYS) and $VLMGATE_ADMIN_KEY. "
        "The UI starts even if the gateway is not up yet; press 'Refresh models' once it is.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--gateway",
        default=os.environ.get("VLMGATE_GATEWAY_URL", "http://127.0.0.1:8000"),
        metavar="URL",
        help="gateway root URL (…/v1 is accepted too)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address the UI binds to")
    parser.add_argument("--port", type=int, default=7860, help="port the UI listens on")
    parser.add_argument("--api-key", default=None, help="inference API key sent as 'Authorization: Bearer'")
    parser.add_argument("--admin-key", default=None, help="admin key for the adapter admin view")
    parser.add_argument(
        "--max-images",
        type=int,
        default=2,
        help="most images resent per request (older ones are dropped first); match the gateway's --max-images",
    )
    parser.add_argument("--max-tokens", type=int, default=256, help="initial value of the 'Max tokens' slider")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    errors = []
    if not args.gateway.startswith(("http://", "https://")):
        errors.append(f"--gateway must be an http(s) URL like http://127.0.0.1:8000, not {args.gateway!r}")
    if not 0 < args.port < 65536:
        errors.append(f"--port must be between 1 and 65535, not {args.port}")
    if args.max_images < 0 or args.max_tokens < 1:
        errors.append("--max-images must be >= 0 and --max-tokens >= 1")
    if errors:
        print("vlmgate ui: " + "\n  ".join(["invalid arguments:", *errors]), file=sys.stderr)
        return 2
    from vlmgate.ui.app import launch_ui  # gradio is slow to import: only once the arguments are known good

    api_key = args.api_key or _default_api_key()
    admin_key = args.admin_key or os.environ.get("VLMGATE_ADMIN_KEY") or None
    print(f"vlmgate ui: http://{args.host}:{args.port}  (gateway {args.gateway})", flush=True)
    try:
        launch_ui(
            args.gateway,
            args.host,
            args.port,
            api_key=api_key,
            admin_key=admin_key,
            max_images=args.max_images,
            max_tokens=args.max_tokens,
            block=True,
        )
    except OSError as exc:  # port in use and the like: one readable line, not a traceback
        print(f"vlmgate ui: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
