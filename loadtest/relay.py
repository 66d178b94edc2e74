"""A bare TCP relay: the least any proxy can do, as the floor reference for the gateway's cost (`vlmgate bench`).

Each client connection gets its own upstream connection and bytes are copied both ways as they arrive: one read
and one write per chunk, no HTTP parsing, no validation, no metrics. Whatever CPU this costs per request on a
machine is what every streaming proxy pays there (wake-ups and system calls per token); what the gateway spends
beyond it is its own. Not a product feature: a measuring stick.

Run as: python -m vlmgate.loadtest.relay --port 9200 --upstream http://127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import asyncio
from urllib.parse import urlsplit


class _Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.upstream: asyncio.Transport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(lambda: _Upstream(self.transport), self.host, self.port)
        except OSError:
            self.transport.close()
            return
        self.upstream = upstream
        for data in self.pending:
            upstream.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def serve(port: int, upstream_url: str) -> None:
    target = urlsplit(upstream_url)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(target.hostname or "127.0.0.1", target.port or 80),
                                      "127.0.0.1", port)  # fmt: skip
    print(f"bare relay on http://127.0.0.1:{port} -> {upstream_url}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vlmgate.loadtest.relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL to relay to, e.g. http://127.0.0.1:8001")
    args = parser.parse_args(argv)
    try:
        import uvloop  # the same event loop as the gateway's uvicorn

        uvloop.run(serve(args.port, args.upstream))
    except ImportError:
        asyncio.run(serve(args.port, args.upstream))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
