# ct's Airflow image: apache-airflow 3.3.2 with the providers in requirements.lock, plus dags/, plugins/
# and the `ml` package's source. Two targets:
#
#   airflow  the api-server, dag-processor and triggerer, and the one-shot `airflow-init` job. No torch,
#            mlflow, great-expectations or evidently. The plugins import ml.config (pydantic, pyyaml),
#            ml.storage (boto3 for an s3:// lake), ml.data.ingest (the triggerer's landing watcher) and, for the
#            api-server's /ct/decisions, ml.release.promote, which imports numpy and pandas at module level; so
#            those light libraries are here too. The build fails if torch ever creeps in.
#   worker   airflow plus the step libraries, at the versions the trainer image uses (torch, torchvision,
#            great-expectations, evidently, mlflow, scipy, scikit-learn, pillow). In the compose stack the
#            scheduler's LocalExecutor runs every `python -m ml <step>` as a subprocess, so the scheduler
#            runs this target.
#
# Why python:3.11-slim and not apache/airflow: the official image installs Airflow from its own
# constraint file (on a host our builds cannot reach) into a layout of its own. Starting from the Python
# image, every package comes from our lock, the same set the test suite runs, and nothing else.
#
# Build, from the repository root (BuildKit reads docker/airflow.Dockerfile.dockerignore for the context):
#   docker build -f docker/airflow.Dockerfile --target airflow \
#       --build-arg CT_CODE_VERSION=$(git rev-parse HEAD) -t ct-airflow:0.1.0 .
#   docker build -f docker/airflow.Dockerfile --target worker \
#       --build-arg CT_CODE_VERSION=$(git rev-parse HEAD) -t ct-airflow-worker:0.1.0 .
#   (A CPU-only worker, about 5 GB smaller: add --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu;
#   the lock's `torch==2.14.1` then matches 2.14.1+cpu. No credentials in that URL: build args stay in the
#   image history.)
# Smoke, on a machine with Docker:
#   docker run --rm ct-airflow:0.1.0 airflow version
#   docker run --rm ct-airflow:0.1.0 python -c "import ml.config, ml.data.ingest, ml.release.promote, ct_airflow.operators.step"
#   docker run --rm ct-airflow-worker:0.1.0 python -m ml --help
#
# Nothing secret is baked in: the database URL, Fernet key, JWT secret and S3 keys arrive as environment
# variables at run time (docker-compose.yaml takes them from .env).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS airflow

ARG CT_VERSION=0.1.0
ARG CT_CODE_VERSION=unknown
ARG CT_SOURCE=unknown
LABEL org.opencontainers.image.title="ct-airflow" \
      org.opencontainers.image.description="Apache Airflow 3.3.2 with ct's DAGs, plugins and light ml package (no torch)" \
      org.opencontainers.image.source="${CT_SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${CT_VERSION}" \
      org.opencontainers.image.revision="${CT_CODE_VERSION}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/airflow/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    PYTHONPATH=/opt/airflow/plugins:/opt/ct \
    GX_ANALYTICS_ENABLED=false \
    TQDM_DISABLE=1 \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
    CT_HOME=/tmp/ct \
    CT_CODE_VERSION=${CT_CODE_VERSION}

WORKDIR /opt/airflow

# Everything pinned by the lock (used as constraints: only what is named here and its dependencies is
# installed). Airflow reaches PostgreSQL through psycopg2 (the URL says postgresql+psycopg2://) and,
# for its async sessions, through asyncpg: it derives postgresql+asyncpg:// from the same URL.
# The last command is the guard that keeps this target torch-free.
COPY requirements.lock /opt/ct/requirements.lock
RUN python -m pip install -c /opt/ct/requirements.lock \
        apache-airflow==3.3.2 \
        apache-airflow-core \
        apache-airflow-task-sdk \
        apache-airflow-providers-cncf-kubernetes \
        apache-airflow-providers-common-compat \
        apache-airflow-providers-common-io \
        apache-airflow-providers-common-sql \
        apache-airflow-providers-smtp \
        apache-airflow-providers-standard \
        psycopg2-binary asyncpg boto3 pydantic pyyaml numpy pandas pyarrow \
    && python -m pip check \
    && python -c "import importlib.util, sys; sys.exit('torch must not be in the airflow target' if importlib.util.find_spec('torch') else 0)"

# A numeric user that owns AIRFLOW_HOME (Airflow writes airflow.cfg and logs there) but not the code:
# dags/, plugins/ and ml/ stay root-owned and read-only to the running services.
RUN groupadd --gid 50000 airflow \
    && useradd --uid 50000 --gid airflow --home-dir /opt/airflow --no-create-home --shell /usr/sbin/nologin airflow \
    && mkdir -p /opt/airflow/logs /opt/airflow/auth /tmp/ct \
    && chown airflow:airflow /opt/airflow /opt/airflow/logs /opt/airflow/auth /tmp/ct \
    && chmod 0700 /opt/airflow/auth

COPY ml /opt/ct/ml
COPY plugins /opt/airflow/plugins
COPY dags /opt/airflow/dags
COPY --chmod=0755 docker/airflow-init.sh /usr/local/bin/ct-airflow-init
RUN python -c "import ml.config, ml.storage, ml.data.ingest, ml.release.promote, ml.cli"

USER 50000:50000
CMD ["airflow", "version"]


FROM airflow AS worker

LABEL org.opencontainers.image.title="ct-airflow-worker" \
      org.opencontainers.image.description="ct's Airflow image plus the ml step libraries (torch, great-expectations, evidently, mlflow)"

# The trainer image's step libraries, from the same lock; here torch and torchvision come from the lock
# too (the trainer takes them from its CUDA base image). The PyPI torch wheel bundles the CUDA runtime,
# so one image serves the CPU scheduler and, with the gpu profile's device, the GPU one. pip reads
# PIP_EXTRA_INDEX_URL from the environment: empty by default, the CPU wheel index for a CPU-only build.
ARG PIP_EXTRA_INDEX_URL=""
USER 0
RUN python -m pip install -c /opt/ct/requirements.lock \
        torch torchvision great-expectations evidently mlflow pillow scipy scikit-learn onnx onnxruntime prometheus-client \
    && python -m pip check \
    && python -c "import ml.cli, ml.learn.train, ml.decide.drift, ml.data.validate, ml.learn.evaluate, ml.serve.app, torch, torchvision"

# What the NVIDIA container runtime mounts from the host driver when the gpu profile hands over a device.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 50000:50000
CMD ["python", "-m", "ml", "--help"]
