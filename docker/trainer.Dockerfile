# The trainer image: CUDA-enabled torch plus the `ml` package, nothing else (no Airflow).
# Every pipeline step runs here as `python -m ml <step> ...` when the runner is `kubernetes`.
#
# Build, from the repository root (BuildKit reads docker/trainer.Dockerfile.dockerignore for the context):
#   docker build -f docker/trainer.Dockerfile --build-arg CT_CODE_VERSION=$(git rev-parse HEAD) -t ct-trainer:0.1.0 .
# Smoke, on a machine with Docker (the entrypoint is `python -m ml`; the default argument is --help):
#   docker run --rm ct-trainer:0.1.0                      # = python -m ml --help
#   docker run --rm --gpus all --entrypoint python ct-trainer:0.1.0 -c "import torch; print(torch.cuda.is_available())"
#
# Configuration arrives at run time (CT_CONFIG_JSON from the operator, credentials from Secrets via
# envFrom); nothing secret is baked in.
ARG BASE_IMAGE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG CT_VERSION=0.1.0
ARG CT_CODE_VERSION=unknown
ARG CT_SOURCE=unknown
LABEL org.opencontainers.image.title="ct-trainer" \
      org.opencontainers.image.description="ct's pipeline steps (python -m ml) with CUDA torch; no Airflow" \
      org.opencontainers.image.source="${CT_SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${CT_VERSION}" \
      org.opencontainers.image.revision="${CT_CODE_VERSION}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GX_ANALYTICS_ENABLED=false \
    TQDM_DISABLE=1 \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
    CT_CODE_VERSION=${CT_CODE_VERSION} \
    CT_HOME=/tmp/ct

WORKDIR /opt/ct
# The step libraries only; the lock pins them and every transitive dependency (as constraints).
# torch and torchvision come from the base image; none of these libraries asks for them.
COPY requirements.lock ./
RUN python -m pip install -c requirements.lock \
        great-expectations evidently mlflow pandas numpy pyarrow pillow scipy scikit-learn boto3 psycopg2-binary pydantic pyyaml \
        onnx onnxruntime prometheus-client
COPY pyproject.toml README.md ./
COPY ml ./ml
RUN python -m pip install --no-deps . && python -c "import ml.cli, ml.learn.train, ml.decide.drift, ml.data.validate, ml.model.artifact, ml.serve.app, onnx, onnxruntime"

RUN groupadd --gid 10001 ct && useradd --uid 10001 --gid ct --no-create-home --shell /usr/sbin/nologin ct \
    && mkdir -p /airflow/xcom /tmp/ct && chown -R ct:ct /airflow /tmp/ct
USER 10001:10001

ENTRYPOINT ["python", "-m", "ml"]
CMD ["--help"]
