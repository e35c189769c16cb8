#!/usr/bin/env bash
# One PostgreSQL server, two databases: Airflow's metadata and MLflow's backend store, each owned by a
# role of its own that can reach nothing else. Mounted into the official postgres image as
# /docker-entrypoint-initdb.d/10-ct-databases.sh, which runs it once, when the data directory is empty.
#
# Names and passwords come from the environment (docker-compose.yaml passes them from .env). psql's
# :'var' and :"var" quote them as a literal and an identifier, so no value is pasted into SQL text.
# To change a password later, ALTER ROLE by hand: this script never runs again on an initialised volume.
#
# The entrypoint sources a script that is not executable (a checkout can lose the mode bit), so the body
# runs in a subshell: its shell options never leak into the entrypoint's own shell.
(
set -euo pipefail

: "${AIRFLOW_DB_NAME:?}" "${AIRFLOW_DB_USER:?}" "${AIRFLOW_DB_PASSWORD:?}"
: "${MLFLOW_DB_NAME:?}" "${MLFLOW_DB_USER:?}" "${MLFLOW_DB_PASSWORD:?}"

psql --no-psqlrc --set ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    --set airflow_db="$AIRFLOW_DB_NAME" --set airflow_user="$AIRFLOW_DB_USER" --set airflow_password="$AIRFLOW_DB_PASSWORD" \
    --set mlflow_db="$MLFLOW_DB_NAME" --set mlflow_user="$MLFLOW_DB_USER" --set mlflow_password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE :"airflow_user" LOGIN PASSWORD :'airflow_password';
CREATE DATABASE :"airflow_db" OWNER :"airflow_user";
REVOKE ALL ON DATABASE :"airflow_db" FROM PUBLIC;

CREATE ROLE :"mlflow_user" LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE :"mlflow_db" OWNER :"mlflow_user";
REVOKE ALL ON DATABASE :"mlflow_db" FROM PUBLIC;
SQL
)
