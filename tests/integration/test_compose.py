"""docker-compose.yml and the Dockerfile, checked without Docker: the compose file against the
Compose Specification's JSON schema (shared/fixtures/compose-spec.json, draft-07), the start
order (health checks, migrations first), and that what they name exists in trialflow."""
from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator

from trialflow import cli
from trialflow.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TRIALFLOW_SERVICES = ("api", "worker", "beat")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def validator(fixtures_dir) -> Draft7Validator:
    schema = json.loads((fixtures_dir / "compose-spec.json").read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def test_the_compose_file_is_valid_against_the_compose_specification(compose, validator):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_compose_file_is_valid_against_compose_go_s_newer_schema(compose, fixtures_dir):
    schema = json.loads((fixtures_dir / "compose-spec.compose-go.json").read_text())
    Draft202012Validator.check_schema(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in Draft202012Validator(schema).iter_errors(compose)]
    assert errors == []
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["helthcheck"] = {}  # a misspelt key: refused here too
    assert list(Draft202012Validator(schema).iter_errors(broken))


def test_each_trialflow_service_keeps_its_data_directory_on_a_named_volume(compose):
    data_dir = compose["x-trialflow"]["environment"]["TRIALFLOW_DATA_DIR"]
    named = []
    for name in TRIALFLOW_SERVICES:
        mounts = [m.split(":") for m in compose["services"][name]["volumes"]]
        [volume] = [source for source, target, *_ in mounts if target == data_dir]
        assert volume in compose["volumes"], name
        named.append(volume)
    assert len(set(named)) == len(named)  # a worker's liveness files are its own, not another service's
    dockerfile_text = (ROOT / "Dockerfile").read_text()
    assert f"install -d -m 0700 -o trialflow -g trialflow {data_dir}" in dockerfile_text


def test_the_schema_check_does_catch_a_broken_compose_file(compose, validator):
    broken = copy.deepcopy(compose)
    broken["services"]["api"]["image"] = 1
    broken["services"]["worker"]["depends_on"]["db"]["condition"] = "service_ready"
    broken["services"]["beat"]["helthcheck"] = {}
    errors = {"/".join(map(str, e.absolute_path)): e.message for e in validator.iter_errors(broken)}
    assert errors["services/api/image"] == "1 is not of type 'string'"
    assert "'service_ready'" in errors["services/worker/depends_on"]
    assert errors["services/beat"].startswith("'helthcheck' does not match any of the regexes")


def test_it_runs_api_worker_beat_on_postgres_16_and_redis_7(compose):
    services = compose["services"]
    assert set(services) == {"db", "redis", "migrate", *TRIALFLOW_SERVICES}
    assert services["db"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    commands = {name: services[name]["command"] for name in ("migrate", *TRIALFLOW_SERVICES)}
    assert commands["migrate"] == ["trialflow", "migrate"]
    assert commands["api"][:2] == ["trialflow", "serve"] and "0.0.0.0" in commands["api"]
    assert commands["worker"][:2] == ["trialflow", "worker"]
    assert commands["beat"] == ["trialflow", "beat"]
    # Each is a real subcommand of the trialflow CLI (a usage error would raise).
    for argv in commands.values():
        assert cli.resolve(argv[1:])[0] == " ".join(argv[:2])


def test_every_long_running_service_has_a_health_check(compose):
    for name, service in compose["services"].items():
        if name == "migrate":
            assert "healthcheck" not in service and service["restart"] == "no"  # one-shot
            continue
        check = service["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and check["retries"] >= 3, name


def test_python_health_checks_are_valid_python(compose):
    for name, service in compose["services"].items():
        test = service.get("healthcheck", {}).get("test", [])
        if test[:3] == ["CMD", "python", "-c"]:
            compile(test[3], f"{name} healthcheck", "exec")


def test_api_worker_and_beat_start_after_healthy_services_and_finished_migrations(compose):
    for name in TRIALFLOW_SERVICES:
        assert compose["services"][name]["depends_on"] == {
            "db": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name
    assert compose["services"]["migrate"]["depends_on"] == {"db": {"condition": "service_healthy"}}


def start_order(services: dict) -> list[str]:
    """Docker Compose's order: a service starts after everything it depends on (fails on a cycle)."""
    order: list[str] = []
    pending = dict(services)
    while pending:
        ready = sorted(n for n, s in pending.items() if all(d in order for d in s.get("depends_on", {})))
        assert ready, f"dependency cycle among {sorted(pending)}"
        order += ready
        for n in ready:
            del pending[n]
    return order


def test_migrations_run_before_anything_that_uses_the_database(compose):
    order = start_order(compose["services"])
    assert order.index("db") < order.index("migrate")
    assert all(order.index("migrate") < order.index(s) for s in TRIALFLOW_SERVICES)


def test_settings_come_from_env_file_and_point_at_the_compose_services(compose):
    fields = {f"TRIALFLOW_{name.upper()}" for name in Settings.model_fields}
    for name in ("migrate", *TRIALFLOW_SERVICES):
        service = compose["services"][name]
        # settings from .env, which a fresh checkout does not have yet: optional, not an error
        assert service["env_file"] == [{"path": ".env", "required": False}]
        env = service["environment"]
        assert set(env) <= fields, f"{name}: unknown settings {set(env) - fields}"
        assert re.fullmatch(r"postgresql\+psycopg://trialflow:\$\{POSTGRES_PASSWORD:-\w+\}@db:5432/trialflow",
                            env["TRIALFLOW_DATABASE_URL"])
        assert env["TRIALFLOW_BROKER_URL"] == "redis://redis:6379/0"
        assert service["build"] == "."


def test_the_api_health_check_calls_a_route_that_answers_200(compose, client):
    test = " ".join(compose["services"]["api"]["healthcheck"]["test"])
    path = re.search(r"http://127\.0\.0\.1:8000(/\w+)", test).group(1)
    assert client.get(path).status_code == 200


def test_the_worker_and_beat_health_checks_are_trialflow_s_own_liveness_checks(compose):
    for name in ("worker", "beat"):
        test = compose["services"][name]["healthcheck"]["test"]
        assert test == ["CMD", "trialflow", name, "--check"], name
        command, options = cli.resolve(test[2:])
        assert (command, options["check"]) == (f"trialflow {name}", True)


def dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_image_is_python_3_11_slim_installs_trialflow_and_runs_as_a_user():
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = [arg for op, arg in steps if op == "RUN"]
    assert any(shlex.split(arg)[:3] == ["pip", "install", "."] for arg in runs)
    users = [i for i, (op, _) in enumerate(steps) if op == "USER"]
    assert users, "the image must not run as root"
    last_user = steps[users[-1]][1]
    assert last_user not in ("root", "0")
    install = next(i for i, (op, arg) in enumerate(steps) if op == "RUN" and "pip install" in arg)
    assert users[-1] > install
    cmd = json.loads(next(arg for op, arg in steps if op == "CMD"))
    assert cmd[:2] == ["trialflow", "serve"]


def test_local_secrets_and_databases_stay_out_of_the_image():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".env", ".venv", ".git", "*.db"} <= ignored
    assert "README.md" not in ignored  # pyproject's readme: pip install . needs it


def test_the_readme_starts_and_checks_it_with_this_compose_file_s_services_and_commands(compose):
    readme = (ROOT / "README.md").read_text()
    deploy = readme[readme.index("## Deploy for your team"):]
    assert "docker compose up -d" in deploy
    runs = re.findall(r"docker compose run --rm (\w+) (trialflow [^\n`]+)", deploy)
    assert {argv.split()[1] for _, argv in runs} >= {"doctor", "slack-manifest"}
    for service, command in runs:
        assert compose["services"][service]["image"] == compose["services"]["migrate"]["image"], service
        argv = shlex.split(command.replace('"$TRIALFLOW_PUBLIC_URL"', "https://trialflow.example.com"))
        assert cli.resolve(argv[1:])[0] == " ".join(argv[:2])
