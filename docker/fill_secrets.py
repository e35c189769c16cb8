"""Replace every ``change-me`` value in a compose ``.env`` file with a fresh random secret, in place.

    cp .env.example .env && python3 docker/fill_secrets.py .env

Only lines whose value is exactly ``change-me`` change: ``*_FERNET_KEY`` gets a Fernet key (32 random
bytes, URL-safe base64), anything else 48 hex digits, which are safe inside the ``postgresql://`` URLs the
compose file builds. Comments, order and every other value stay as they are. The file is rewritten
readable by its owner only (0600). Run it again at any time: values already filled are left alone.
Standard library only, so any ``python3`` runs it.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import sys
import tempfile
from pathlib import Path

PLACEHOLDER = "change-me"
_ASSIGNMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")


def new_secret(name: str) -> str:
    """A random value suited to the variable ``name``."""
    if name.endswith("FERNET_KEY"):
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    return secrets.token_hex(24)


def fill(text: str) -> tuple[str, list[str]]:
    """``text`` with each placeholder replaced, and the names of the variables that changed."""
    lines, filled = [], []
    for line in text.splitlines(keepends=True):
        match = _ASSIGNMENT.match(line.rstrip("\r\n"))
        if match and match["value"].strip() == PLACEHOLDER:
            ending = line[len(line.rstrip("\r\n")) :]
            line = f"{match['name']}={new_secret(match['name'])}{ending}"
            filled.append(match["name"])
        lines.append(line)
    return "".join(lines), filled


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[0])
    if not path.is_file():
        print(f"{path} does not exist; first: cp .env.example {path}", file=sys.stderr)
        return 1
    text, filled = fill(path.read_text())
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    print(f"{path}: filled {', '.join(filled) if filled else 'nothing (no change-me left)'}; mode 0600")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
