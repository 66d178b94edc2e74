"""`vlmgate adapters`: manage the LoRA adapters of a running gateway through its admin API.

Run as: vlmgate adapters add NAME PATH [--pinned] [--version V] [--lazy]
        vlmgate adapters list | show NAME | remove NAME
The admin key comes from --admin-key or VLMGATE_ADMIN_KEY; the gateway from --gateway or VLMGATE_URL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import httpx


def build_parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Manage the LoRA adapters of a running vlmgate gateway.")
    parser.add_argument("--gateway", default=os.environ.get("VLMGATE_URL", "http://127.0.0.1:8000"),
                        help="gateway URL (default: $VLMGATE_URL or http://127.0.0.1:8000)")  # fmt: skip
    parser.add_argument("--admin-key", default=os.environ.get("VLMGATE_ADMIN_KEY"),
                        help="admin key (default: $VLMGATE_ADMIN_KEY)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the raw JSON records")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="register an adapter from the gateway's adapter store and load it")
    add.add_argument("name", help="name clients will use as `model`")
    add.add_argument("path", help="adapter directory, relative to the gateway's adapter store")
    add.add_argument("--base", help="base model (needed when the gateway serves several)")
    add.add_argument("--version", help="version label (requests may ask for NAME@VERSION)")
    add.add_argument("--pinned", action="store_true", help="never evict it to make room for others")
    add.add_argument("--lazy", action="store_true", help="register now, load on its first request")
    sub.add_parser("list", help="list adapters and their state")
    show = sub.add_parser("show", help="show one adapter's record")
    show.add_argument("name")
    remove = sub.add_parser("remove", help="drain in-flight requests, unload and forget an adapter")
    remove.add_argument("name")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    headers = {"Authorization": f"Bearer {args.admin_key}"} if args.admin_key else {}
    with httpx.Client(base_url=args.gateway.rstrip("/"), headers=headers, timeout=300) as client:
        try:
            reply = _call(client, args)
        except httpx.HTTPError as exc:
            print(f"vlmgate adapters: cannot reach the gateway at {args.gateway}: {exc}", file=sys.stderr)
            return 1
    data = reply.json() if reply.headers.get("content-type", "").startswith("application/json") else {}
    if reply.status_code >= 400:
        message = data.get("error", {}).get("message", reply.text) if isinstance(data, dict) else reply.text
        print(f"vlmgate adapters: HTTP {reply.status_code}: {message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.command == "list":
        _print_table(data["data"])
    else:
        _print_table([data])
    return 0


def _call(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    if args.command == "add":
        body = {"name": args.name, "path": args.path, "pinned": args.pinned, "load": not args.lazy}
        body.update({k: v for k, v in (("base", args.base), ("version", args.version)) if v})
        return client.post("/v1/adapters", json=body)
    if args.command == "list":
        return client.get("/v1/adapters")
    if args.command == "show":
        return client.get(f"/v1/adapters/{args.name}")
    return client.delete(f"/v1/adapters/{args.name}")


def _print_table(records: list[dict]) -> None:
    columns = ("name", "version", "state", "base_model", "rank", "pinned", "reason")
    rows = [[str(r.get(c) if r.get(c) is not None else "") for c in columns] for r in records]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    if not rows:
        print("(no adapters)")
