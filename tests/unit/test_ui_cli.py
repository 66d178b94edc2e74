"""`vlmgate ui`'s argument handling, and the Blocks layout built (not launched) with the ids the browser test uses."""

from __future__ import annotations

import pytest

from vlmgate.ui import cli


def test_bad_arguments_are_all_reported_at_once_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--gateway", "gw:8000", "--port", "70000", "--max-tokens", "0"], prog="vlmgate ui") == 2
    err = capsys.readouterr().err
    assert "--gateway must be an http(s) URL" in err
    assert "--port must be between 1 and 65535" in err
    assert "--max-tokens >= 1" in err


def test_api_key_defaults_to_the_gateways_first_inference_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLMGATE_API_KEY", raising=False)
    monkeypatch.setenv("VLMGATE_API_KEYS", " sk-one , sk-two")
    assert cli._default_api_key() == "sk-one"
    monkeypatch.setenv("VLMGATE_API_KEY", "sk-mine")
    assert cli._default_api_key() == "sk-mine"
    monkeypatch.delenv("VLMGATE_API_KEY")
    monkeypatch.setenv("VLMGATE_API_KEYS", "")
    assert cli._default_api_key() is None


def test_app_builds_with_the_elements_the_browser_test_drives() -> None:
    from vlmgate.ui.app import build_app

    demo = build_app("http://127.0.0.1:9/v1")  # nothing listens there: building must not call the gateway
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    for needed in ("model-picker", "refresh-models", "chatbot", "chat-input", "chat-stop", "max-tokens",
                   "temperature", "exact-tokens", "compare-image", "compare-model-a", "compare-model-b", "compare-run",
                   "compare-answer-a", "compare-answer-b", "adapters-table", "adapter-register", "adapter-remove",
                   "slo-latency", "slo-attainment", "slo-status"):  # fmt: skip
        assert needed in ids, needed
