"""deploy/: the Prometheus rules pass their promtool unit tests, and the Grafana dashboard's queries are valid
PromQL over metrics the gateway exports or the rules record. Needs `promtool` (Debian: apt-get install prometheus).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from vlmgate.serve.admission import Admission
from vlmgate.serve.metrics import GatewayMetrics
from vlmgate.serve.observability import register_admission_metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = sorted((DEPLOY / "prometheus").glob("*rules*.yml"))
DASHBOARD = DEPLOY / "grafana" / "vlmgate-slo.json"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:  # a missing tool is a broken setup, not a reason to skip
        pytest.fail("promtool not found: apt-get install -y prometheus (make system-deps)")
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_rule_files_are_valid(promtool: str) -> None:
    assert [p.name for p in RULES] == ["vlmgate_alert_rules.yml", "vlmgate_recording_rules.yml"]
    result = run(promtool, "check", "rules", *map(str, RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass(promtool: str) -> None:
    tests = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
    assert tests
    result = run(promtool, "test", "rules", *map(str, tests))
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def known_series() -> set[str]:
    """Every series name the gateway exports (even before any traffic) or the recording rules record."""
    metrics = GatewayMetrics()
    register_admission_metrics(metrics, Admission)
    text = metrics.exposition().decode()
    exported = set(re.findall(r"^# TYPE (vlmgate_[a-z0-9_]+) ", text, re.MULTILINE))
    histograms = set(re.findall(r"^# TYPE (vlmgate_[a-z0-9_]+) histogram", text, re.MULTILINE))
    recorded = {
        rule["record"]
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    return exported | recorded | {f"{h}_{suffix}" for h in histograms for suffix in ("bucket", "count", "sum")}


def test_dashboard_queries_use_only_known_series(tmp_path: Path) -> None:
    names = {n for e in dashboard_exprs() for n in re.findall(r"\b(vlmgate[:_][a-z0-9_:]+)", e)}
    assert names, "the dashboard has no vlmgate queries"
    assert names - known_series() == set()


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    # promtool has no offline PromQL checker; a rule file with each query as a recording rule is checked instead.
    exprs = [
        e.replace("$__rate_interval", "5m").replace("$model", ".*").replace("$adapter", ".*") for e in dashboard_exprs()
    ]
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout
