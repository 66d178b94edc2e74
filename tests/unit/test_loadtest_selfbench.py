"""The generator self-benchmark runs end to end against its STUB upstream (a separate process) and reports
overhead and schedule figures for every setting asked for. Structure only: no speed is asserted."""

from __future__ import annotations

import json

import pytest

from vlmgate.loadtest import selfbench


@pytest.mark.slow
def test_selfbench_reports_overhead_and_schedule_accuracy(tmp_path, capsys):
    out = tmp_path / "selfbench.json"
    assert selfbench.main(["--requests", "20", "--tokens", "4", "--rates", "50,100", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [row["concurrency"] for row in results["overhead"]] == [1, 8, 32]
    assert all(row["succeeded"] == 20 for row in results["overhead"])
    assert [row["rate"] for row in results["schedule"]] == [50.0, 100.0]
    assert all(row["failed"] == 0 for row in results["schedule"])
    assert "arrival schedule accuracy" in capsys.readouterr().out
