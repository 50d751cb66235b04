"""The project's own files agree with each other: pyproject.toml's dependencies are requirements.in's pins, every
pin is exact, the version is written once, setup.cfg names the same distribution, mypy's modules exist, and the CI
workflow runs what .ci/run runs, on the services the suite needs."""

import configparser
import re
import tomllib
from pathlib import Path

import yaml

import todo_api
from support import REPO as REPO_PATH

REPO = Path(REPO_PATH)
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXACT_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!-]+$")


def requirement_lines(name):
    """The requirements a requirements*.in file lists, without comments and its -r/-c lines."""
    lines = (line.split("#", 1)[0].strip() for line in (REPO / name).read_text().split("\n"))
    return [line for line in lines if line and not line.startswith("-")]


def workflow():
    return yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())


def workflow_commands():
    return [step["run"] for job in workflow()["jobs"].values() for step in job["steps"] if "run" in step]


def test_pyproject_dependencies_are_the_pins_of_requirements_in():
    assert PYPROJECT["project"]["dependencies"] == requirement_lines("requirements.in")


def test_every_direct_requirement_is_pinned_exactly():
    loose = [
        line
        for name in ("requirements.in", "requirements-dev.in")
        for line in requirement_lines(name)
        if not EXACT_PIN.match(line)
    ]
    assert loose == []


def test_the_version_is_read_from_the_package():
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "todo_api.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", todo_api.__version__)


def test_setup_cfg_names_the_same_distribution():
    setup_cfg = configparser.ConfigParser()
    setup_cfg.read(REPO / "setup.cfg")
    assert {section: dict(setup_cfg[section]) for section in setup_cfg.sections()} == {
        "metadata": {"name": PYPROJECT["project"]["name"]}
    }


def test_the_license_is_mit_for_the_contributors():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 todo-api contributors\n")
    assert PYPROJECT["project"]["license"] == "MIT"


def test_the_modules_mypy_checks_exist():
    missing = [path for path in PYPROJECT["tool"]["mypy"]["files"] if not (REPO / path).is_file()]
    assert missing == []


def test_the_workflow_runs_the_make_targets_of_ci_run():
    ci_run_targets = re.findall(r"^\s*make (\S+)$", (REPO / ".ci" / "run").read_text(), re.MULTILINE)
    assert ci_run_targets == ["lint", "test", "coverage"]
    assert [command for command in workflow_commands() if command.startswith("make ")] == [
        f"make {target}" for target in ci_run_targets
    ]


def test_the_workflow_has_postgres_15_redis_and_pgbouncer():
    services = workflow()["jobs"]["test"]["services"]
    assert services["postgres"]["image"] == "postgres:15"
    assert services["postgres"]["ports"] == ["5432:5432"]
    assert services["redis"]["image"].startswith("redis:")
    assert services["redis"]["ports"] == ["6379:6379"]
    installs = [command for command in workflow_commands() if "apt-get install" in command]
    assert len(installs) == 1
    assert re.search(r"apt-get install .*\bpgbouncer\b.*\bpostgresql-15\b", installs[0])
