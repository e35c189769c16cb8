# The MLflow tracking server and model registry: mlflow with psycopg2-binary (a PostgreSQL backend store)
# and boto3 (artifacts in S3 or MinIO), all at the versions in requirements.lock, the same mlflow the
# steps log with. The entrypoint is `mlflow server`; the compose file passes the flags.
#
# Build, from the repository root (BuildKit reads docker/mlflow.Dockerfile.dockerignore for the context):
#   docker build -f docker/mlflow.Dockerfile --build-arg CT_CODE_VERSION=$(git rev-parse HEAD) -t ct-mlflow:0.1.0 .
# Smoke, on a machine with Docker (the entrypoint is `mlflow server`, so name `mlflow` itself):
#   docker run --rm --entrypoint mlflow ct-mlflow:0.1.0 --version
#   docker run --rm ct-mlflow:0.1.0 --help
#
# Nothing secret is baked in. The backend store URI (with its password) and the S3 keys arrive as
# environment variables (MLFLOW_BACKEND_STORE_URI, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), which keeps
# them off the command line. The server serves artifacts itself (proxied), so clients need no S3 keys.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE}

ARG CT_VERSION=0.1.0
ARG CT_CODE_VERSION=unknown
ARG CT_SOURCE=unknown
LABEL org.opencontainers.image.title="ct-mlflow" \
      org.opencontainers.image.description="MLflow tracking server and model registry for ct (PostgreSQL backend store, S3 artifacts)" \
      org.opencontainers.image.source="${CT_SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${CT_VERSION}" \
      org.opencontainers.image.revision="${CT_CODE_VERSION}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    MLFLOW_HOST=0.0.0.0 \
    MLFLOW_PORT=5000 \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

COPY requirements.lock /tmp/requirements.lock
RUN python -m pip install -c /tmp/requirements.lock mlflow psycopg2-binary boto3 \
    && python -m pip check \
    && rm /tmp/requirements.lock

# A numeric user with a home of its own (boto3 and mlflow look for ~/.aws and ~/.mlflow) and nothing else writable.
RUN groupadd --gid 10002 mlflow \
    && useradd --uid 10002 --gid mlflow --create-home --home-dir /home/mlflow --shell /usr/sbin/nologin mlflow
WORKDIR /home/mlflow
USER 10002:10002

# Listens on every interface inside the container (MLFLOW_HOST); the compose file publishes it on 127.0.0.1 only.
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: otherwise the server starts job-queue consumers (about 30
# processes) for GenAI jobs that ct never submits.
EXPOSE 5000
ENTRYPOINT ["mlflow", "server"]
