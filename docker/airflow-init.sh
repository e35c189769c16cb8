#!/usr/bin/env bash
# The compose stack's one-shot Airflow job (`airflow-init`): refuse .env.example's placeholders, migrate
# the metadata database, then set the admin's password for SimpleAuthManager. Installed in the image as
# /usr/local/bin/ct-airflow-init.
#
# SimpleAuthManager reads passwords from a JSON file ([core] simple_auth_manager_passwords_file) and
# generates a random one, printed to the api-server's log, for any configured user the file lacks. This
# job writes AIRFLOW_ADMIN_PASSWORD from .env into that file (a volume shared with the api-server only),
# keeping any other users' entries, so the login is the one the operator chose and survives restarts.
# Safe to run again: `airflow db migrate` is idempotent and the file is replaced atomically.
set -euo pipefail

: "${AIRFLOW_ADMIN_USER:?set AIRFLOW_ADMIN_USER in .env}"
: "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD in .env}"
: "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?the compose file sets it; this job writes that file}"

# Refuse the placeholders of .env.example: a stack whose keys and passwords are published in the repository
# must not come up. Airflow would also take a malformed Fernet key and fail only when it first encrypts.
python - <<'PY'
import os
import sys

from cryptography.fernet import Fernet

left = sorted(name for name, value in os.environ.items() if "change-me" in value)
if left:
    sys.exit(
        f"airflow-init: .env still holds the placeholder `change-me` (it reaches this container as {', '.join(left)}). "
        "Run `python3 docker/fill_secrets.py .env`. PostgreSQL and MinIO kept the placeholders when they first "
        "started, so on a new stack also run `docker compose down -v` (it deletes the stack's volumes) before "
        "`docker compose up -d`."
    )
try:
    Fernet(os.environ["AIRFLOW__CORE__FERNET_KEY"])
except (KeyError, ValueError) as exc:
    sys.exit(f"airflow-init: AIRFLOW_FERNET_KEY in .env is not a Fernet key ({exc}); see .env.example for how to make one")
PY

airflow db migrate

python - <<'PY'
import json
import os
import tempfile

path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
passwords = {}
if os.path.exists(path):
    with open(path) as existing:
        text = existing.read().strip()
    passwords = json.loads(text) if text else {}
passwords[os.environ["AIRFLOW_ADMIN_USER"]] = os.environ["AIRFLOW_ADMIN_PASSWORD"]
fd, partial = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".passwords.")  # created 0600
with os.fdopen(fd, "w") as out:
    json.dump(passwords, out)
    out.write("\n")
os.replace(partial, path)
print(f"airflow-init: password of {os.environ['AIRFLOW_ADMIN_USER']!r} set in {path}")
PY
