"""The Dockerfile and .dockerignore, checked offline: multi-stage, no extras, non-root, health check, ports,
entrypoint; the build context keeps out what it should and lets in what the Dockerfile copies.
"""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.deploy.conftest import REPO
from tests.deploy.dockerfile import dockerfile_env, dockerfile_stages
from tests.deploy.serve_cli import check_serve_env


def test_dockerfile_is_multi_stage_and_the_final_stage_has_no_compiler_or_pip_install() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "the Dockerfile should build in one stage and run in another"
    final = stages[-1]
    for instruction, rest in final:
        if instruction == "RUN":
            assert "pip install" not in rest and "build-essential" not in rest and "gcc" not in rest, rest
    assert any(i == "COPY" and "--from=" in rest for i, rest in final), "the final stage copies the built venv"


def test_dockerfile_installs_the_package_without_extras() -> None:
    installs = [rest for stage in dockerfile_stages() for i, rest in stage if i == "RUN" and "pip install" in rest]
    assert installs, "the Dockerfile installs the package with pip"
    for rest in installs:
        command = rest.split("pip install", 1)[1].split("&&", 1)[0].split()
        targets = [word for word in command if not word.startswith("-")]
        assert targets == ["."], f"install the package itself, without extras (no dev, no local): {rest}"
        assert "[" not in rest.split("&&", 1)[0], f"no extras in the image: {rest}"


def test_dockerfile_runs_as_non_root_with_healthcheck_ports_and_entrypoint() -> None:
    final = dockerfile_stages()[-1]
    users = [rest for i, rest in final if i == "USER"]
    assert users, "the final stage sets a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), "the gateway must not run as root"
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"

    healthchecks = [rest for i, rest in final if i == "HEALTHCHECK"]
    assert healthchecks and "/healthz" in healthchecks[-1]
    assert "curl" not in healthchecks[-1] and "wget" not in healthchecks[-1], "slim has neither: use Python"

    exposed = {int(p.split("/")[0]) for i, rest in final if i == "EXPOSE" for p in rest.split()}
    assert exposed == {8080, 8081}
    env = dockerfile_env(final)
    check_serve_env(list(env), "Dockerfile ENV")
    assert env.get("MODELYARD_HOST") == "0.0.0.0", "inside a container the gateway must listen on every interface"
    assert {int(env["MODELYARD_HTTP_PORT"]), int(env["MODELYARD_GRPC_PORT"])} == exposed

    entrypoints = [rest for i, rest in final if i == "ENTRYPOINT"]
    assert entrypoints and yaml.safe_load(entrypoints[-1]) == ["modelyard", "serve"]


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(.dockerignore) as (negated, regex) in file order; the last matching rule decides."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((negated, re.compile(regex)))
    return rules


def dockerignored(path: str) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # a rule on a folder covers its contents
    ignored = False
    for negated, regex in dockerignore_rules():
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_venv_git_caches_and_tests_out() -> None:
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        ".pytest_cache/v/cache/nodeids",
        ".mypy_cache/3.11/gateway.json",
        ".ruff_cache/content",
        ".localstack/x",
        "tests/conftest.py",
        "gateway/__pycache__/cli.cpython-311.pyc",
        "modelyard.egg-info/PKG-INFO",
    ):
        assert dockerignored(path), f"{path} should stay out of the build context"


def test_dockerignore_lets_in_everything_the_dockerfile_copies() -> None:
    sources: list[str] = []
    for stage in dockerfile_stages():
        for instruction, rest in stage:
            if instruction == "COPY" and "--from=" not in rest:
                sources += rest.split()[:-1]
    assert sources
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for source in sources:
        source = source.rstrip("/")
        files = [f for f in tracked if f == source or f.startswith(source + "/")]
        assert files, f"COPY {source}: nothing tracked there"
        for f in files:
            assert not dockerignored(f), f"COPY {source}: {f} is excluded by .dockerignore"
