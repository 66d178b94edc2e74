"""Answer scoring, deterministic data order for resume, and `--push` against a stand-in gateway admin API."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from vlmgate.finetune.config import FinetuneConfig
from vlmgate.finetune.evaluate import exact_match, score, token_f1
from vlmgate.finetune.export import PushError, push
from vlmgate.finetune.manifest import AdapterManifest, BaseModelRef, write_manifest
from vlmgate.finetune.train import batches_for_step, total_steps


def test_exact_match_and_token_f1():
    assert exact_match("Rouge.", "rouge") == 1.0
    assert exact_match("rouge vif", "rouge") == 0.0
    assert token_f1("a red circle", "a red square") == pytest.approx(2 / 3)
    assert token_f1("", "rouge") == 0.0


def test_score_table():
    from vlmgate.finetune.data import Example

    examples = [Example([{"role": "user", "content": "q"}, {"role": "assistant", "content": a}], []) for a in "ab"]
    report = score(examples, base=["x", "b"], adapted=["a", "b"])
    assert report.metrics["base_exact_match"] == 0.5
    assert report.metrics["adapter_exact_match"] == 1.0
    assert "| base + adapter | 100.0% |" in report.markdown()


def test_data_order_is_a_function_of_seed_and_step():
    cfg = FinetuneConfig(base_model="m", train_data="t", batch_size=3, grad_accum=2, epochs=2, seed=7)
    steps = total_steps(cfg, 10)
    assert steps == 4  # ceil(10 / 6) = 2 steps per epoch
    first = [batches_for_step(cfg, 10, s) for s in range(steps)]
    assert first == [batches_for_step(cfg, 10, s) for s in range(steps)]  # replayable after a resume
    epoch0 = sorted(i for s in (0, 1) for mb in first[s] for i in mb)
    assert epoch0 == list(range(10))  # every example once per epoch
    other_seed = FinetuneConfig(base_model="m", train_data="t", batch_size=3, grad_accum=2, epochs=2, seed=8)
    assert [batches_for_step(other_seed, 10, s) for s in range(steps)] != first


class _Gateway(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Gateway.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.headers.get("Authorization") != "Bearer sekret":
            status, reply = 401, {"error": {"message": "admin key required", "type": "auth", "param": None,
                                            "code": "unauthorized"}}  # fmt: skip
        else:
            status, reply = 201, {"name": body["name"], "state": "live"}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        return


@pytest.fixture
def gateway_url():
    server = HTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_push_registers_with_admin_key_and_reports_gateway_errors(tmp_path, gateway_url, monkeypatch):
    manifest = AdapterManifest(name="colours-fr", base_model=BaseModelRef(name="b", fingerprint="v1:x"),
                               method="qlora", rank=16, alpha=32, target_modules=["m.q_proj"])  # fmt: skip
    write_manifest(tmp_path, manifest)
    monkeypatch.setenv("VLMGATE_ADMIN_KEY", "sekret")
    record = push(tmp_path, gateway_url, version="1", pinned=True)
    assert record == {"name": "colours-fr", "state": "live"}
    sent = _Gateway.requests[-1]
    assert sent["path"] == "/v1/adapters"
    assert sent["body"] == {"name": "colours-fr", "path": str(tmp_path.resolve()), "pinned": True, "version": "1"}
    monkeypatch.delenv("VLMGATE_ADMIN_KEY")
    with pytest.raises(PushError, match=r"HTTP 401\): admin key required \(set --admin-key"):
        push(tmp_path, gateway_url)
    with pytest.raises(PushError, match="cannot reach the gateway"):
        push(tmp_path, "http://127.0.0.1:9", admin_key="sekret", timeout_s=2)
