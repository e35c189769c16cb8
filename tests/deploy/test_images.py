"""The three Dockerfiles: hadolint, and what each promises (non-root, pinned bases, OCI labels, the lock).

No image is built here (there is no Docker engine); the Dockerfiles are linted and read. The smoke
commands their headers document are for a machine with Docker.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.conftest import DOCKER_DIR, REPO

DOCKERFILES = {name: DOCKER_DIR / f"{name}.Dockerfile" for name in ("airflow", "trainer", "mlflow")}
OCI_LABELS = {f"org.opencontainers.image.{key}" for key in ("title", "description", "source", "licenses", "version",
                                                            "revision")}  # fmt: skip
#: The step libraries: the Airflow image's services must never pay for importing (or storing) them.
HEAVY = {"torch", "torchvision", "triton", "mlflow", "mlflow-skinny", "great-expectations", "evidently"}
#: What each header documents, for a machine with Docker.
SMOKE = {
    "airflow": ["docker build -f docker/airflow.Dockerfile --target airflow", "--target worker",
                "airflow version", "python -m ml --help"],
    "trainer": ["docker build -f docker/trainer.Dockerfile", "python -m ml --help"],
    "mlflow": ["docker build -f docker/mlflow.Dockerfile", "--entrypoint mlflow", "--version"],
}  # fmt: skip
_PIP_OPTIONS_WITH_VALUE = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url",
                           "-f", "--find-links"}  # fmt: skip


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    found, pending = [], ""
    for line in path.read_text().splitlines():
        if line.strip().startswith("#") or (not pending and not line.strip()):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        found.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return found


def stages(path: Path) -> list[Stage]:
    """The build stages, with each FROM's image resolved through the ARG defaults declared before it."""
    defaults: dict[str, str] = {}
    result: list[Stage] = []
    for keyword, args in instructions(path):
        if keyword == "FROM":
            image, _, name = args.partition(" AS ")
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m[1], m[0]), image)
            result.append(Stage(image.strip(), name.strip() or None))
        elif result:
            result[-1].instructions.append((keyword, args))
        elif keyword == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            defaults[name] = value.strip("\"'")
    return result


def pip_installs(stage: Stage) -> list[list[str]]:
    """The tokens after ``pip install`` of each pip command in the stage's RUN instructions."""
    commands = []
    for run in stage.args("RUN"):
        for part in run.split("&&"):
            tokens = shlex.split(part)
            if "pip" in tokens and "install" in tokens:
                commands.append(tokens[tokens.index("install") + 1 :])
    return commands


def packages(tokens: list[str]) -> list[str]:
    """Distribution names in pip install arguments (options and their values, and ``.``, left out)."""
    names, skip = [], False
    for token in tokens:
        if skip:
            skip = False
        elif token in _PIP_OPTIONS_WITH_VALUE:
            skip = True
        elif not token.startswith("-") and token != ".":
            names.append(canonical(re.split(r"[=<>!~\[;]", token, maxsplit=1)[0]))
    return names


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> set[str]:
    return {
        canonical(line.split("==")[0]) for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line
    }


def labels(stage: Stage) -> dict[str, str]:
    pairs = [token.split("=", 1) for args in stage.args("LABEL") for token in shlex.split(args)]
    return dict((key, value) for key, value in pairs)


@pytest.fixture(params=sorted(DOCKERFILES), ids=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, Path]:
    return request.param, DOCKERFILES[request.param]


def test_hadolint_passes(hadolint_bin: Path, dockerfile: tuple[str, Path]) -> None:
    _, path = dockerfile
    done = subprocess.run([str(hadolint_bin), "--no-color", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_hadolint_rejects_a_bad_dockerfile(hadolint_bin: Path, tmp_path: Path) -> None:
    """Proof that the linter really runs and reads the file: these three faults must each be reported."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    done = subprocess.run([str(hadolint_bin), "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3002"):  # latest tag, unpinned pip package, last USER root
        assert rule in done.stdout, done.stdout


def test_no_unjustified_hadolint_ignores(dockerfile: tuple[str, Path]) -> None:
    assert not any((REPO / name).exists() for name in (".hadolint.yaml", ".hadolint.yml")), "no global ignores"
    lines = dockerfile[1].read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert number and lines[number - 1].strip().startswith("#") and "hadolint" not in lines[number - 1], (
                f"{dockerfile[1].name}:{number + 1}: say why on the comment line above the ignore"
            )


def test_every_stage_ends_as_a_numeric_non_root_user(dockerfile: tuple[str, Path]) -> None:
    for stage in stages(dockerfile[1]):
        users = stage.args("USER")
        assert users, f"{stage.name or stage.base}: no USER"
        uid, _, gid = users[-1].partition(":")
        assert uid.isdigit() and int(uid) != 0 and (not gid or gid.isdigit()), f"{stage.name}: USER {users[-1]}"


def test_every_base_image_is_pinned_to_a_version(dockerfile: tuple[str, Path]) -> None:
    all_stages = stages(dockerfile[1])
    internal = {stage.name for stage in all_stages}
    for stage in all_stages:
        if stage.base in internal:
            continue  # built on an earlier stage of the same file
        repository, _, tag = stage.base.rpartition(":")
        assert repository and "/" not in tag, f"untagged base image {stage.base}"
        assert tag != "latest" and re.match(r"\d+\.\d+\.\d+", tag), f"{stage.base}: not an exact version tag"


def test_oci_labels_come_from_build_args(dockerfile: tuple[str, Path]) -> None:
    first = stages(dockerfile[1])[0]
    found = labels(first)
    assert OCI_LABELS <= set(found), OCI_LABELS - set(found)
    declared = {arg.split("=", 1)[0] for arg in first.args("ARG")}
    for key in ("version", "revision", "source"):
        variable = re.fullmatch(r"\$\{(\w+)\}", found[f"org.opencontainers.image.{key}"])
        assert variable and variable[1] in declared, f"{key} must come from a build arg"
    assert found["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_every_pip_install_is_pinned_by_the_lock(dockerfile: tuple[str, Path]) -> None:
    lock, installs = locked(), [tokens for stage in stages(dockerfile[1]) for tokens in pip_installs(stage)]
    assert installs
    for tokens in installs:
        names = packages(tokens)
        if not names:
            continue  # `pip install --no-deps .`: ct itself
        assert "-c" in tokens and tokens[tokens.index("-c") + 1].endswith("requirements.lock"), tokens
        # A constraint file pins only what it lists: anything not in the lock would float.
        assert set(names) <= lock, f"not in requirements.lock: {set(names) - lock}"


def test_airflow_target_has_no_torch_and_the_worker_has_the_step_libraries() -> None:
    by_name = {stage.name: stage for stage in stages(DOCKERFILES["airflow"])}
    assert set(by_name) == {"airflow", "worker"}
    airflow = {name for tokens in pip_installs(by_name["airflow"]) for name in packages(tokens)}
    worker = {name for tokens in pip_installs(by_name["worker"]) for name in packages(tokens)}
    assert "apache-airflow" in airflow and airflow & HEAVY == set()
    assert {"torch", "torchvision", "mlflow", "great-expectations", "evidently"} <= worker
    assert by_name["worker"].base == "airflow"
    # ...and the build itself fails if a dependency ever drags torch into the airflow target.
    assert any("find_spec('torch')" in run for run in by_name["airflow"].args("RUN"))


def test_smoke_and_build_commands_are_documented(dockerfile: tuple[str, Path]) -> None:
    name, path = dockerfile
    header = "\n".join(line for line in path.read_text().split("\nFROM ", 1)[0].splitlines() if line.startswith("#"))
    assert "docker run --rm" in header
    for text in SMOKE[name]:
        assert text in header, f"{path.name}: the header should show {text!r}"


def test_build_context_is_an_allow_list_that_covers_every_copy(dockerfile: tuple[str, Path]) -> None:
    path = dockerfile[1]
    ignore = path.with_name(path.name + ".dockerignore")
    patterns = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "start by leaving everything out (.venv, .ct, .env)"
    allowed = [pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")]
    assert not {".env", ".venv", ".ct"} & set(allowed)
    for stage in stages(path):
        for args in stage.args("COPY"):
            tokens = [token for token in shlex.split(args) if not token.startswith("--")]
            for source in tokens[:-1]:
                assert source.rstrip("/").removeprefix("./") in allowed, f"COPY {source}: not in {ignore.name}"
