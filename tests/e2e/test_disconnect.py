"""A client that hangs up mid-stream makes the gateway abort the engine request: generation stops.

The engine's token counter is the witness: a gateway that kept draining the engine after the client left would
let it generate all `max_tokens`. tests/unit/test_gateway_stream.py shows the mechanism itself: the
upstream connection is closed when the client disconnects.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.conftest import RunningGateway, disconnected_requests, engine_held, metric_total, request_counts

pytestmark = pytest.mark.engine


def test_client_disconnect_stops_generation_upstream(gateway: RunningGateway) -> None:
    max_tokens = 1500
    tokens_before = metric_total(gateway.engine_url, "vllm:generation_tokens_total")
    body = {
        "model": "vlmgate-demo",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,  # would generate all max_tokens if nobody stopped it
        "stream": True,
    }
    before = disconnected_requests(gateway)
    # The engine makes ~400 tokens/s on its own core while the client's hang-up crosses the busy shared one: free
    # running, half the answer could be out before the abort arrives. So the engine runs in short bursts while the
    # client reads, and is held still from the hang-up until the gateway has recorded it.
    with engine_held(gateway) as burst:
        reading = threading.Event()
        reading.set()

        def let_it_run() -> None:
            while reading.is_set():
                burst()
                time.sleep(0.1)

        bursts = threading.Thread(target=let_it_run, daemon=True)
        bursts.start()
        try:
            with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=60) as r:
                assert r.status_code == 200
                received = 0
                for line in r.iter_lines():
                    received += line.startswith("data: ")
                    if received >= 3:
                        break
                reading.clear()  # the answer is still running; from here on the engine stays held
                bursts.join()
        finally:
            reading.clear()
        # The client connection is closed here: the gateway records a disconnect without the held engine's help.
        deadline = time.monotonic() + 60
        while disconnected_requests(gateway) == before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert disconnected_requests(gateway) == before + 1, request_counts(gateway)
    # Released, the engine must drop the request. Wait until its token counter stops moving.
    previous, current = -1.0, metric_total(gateway.engine_url, "vllm:generation_tokens_total")
    deadline = time.monotonic() + 90
    while current != previous and time.monotonic() < deadline:
        time.sleep(3)
        previous, current = current, metric_total(gateway.engine_url, "vllm:generation_tokens_total")
    assert metric_total(gateway.engine_url, "vllm:num_requests_running") == 0
    generated = metric_total(gateway.engine_url, "vllm:generation_tokens_total") - tokens_before
    assert generated < max_tokens / 2, f"engine generated {generated} tokens after the client left"
