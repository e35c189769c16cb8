"""Imported once by the fault suite's forkserver, so that forked steps start warm."""

import great_expectations  # noqa: F401
import mlflow  # noqa: F401
import onnxruntime  # noqa: F401
import pandas  # noqa: F401
import requests  # noqa: F401
import scipy.stats  # noqa: F401
import torch  # noqa: F401
from botocore.client import BaseClient  # noqa: F401

import ml.cli
import ml.data.ingest
import ml.data.validate
import ml.learn.evaluate
import ml.learn.train
import ml.model.artifact
import ml.release.promote  # noqa: F401
import tests.faults.harness  # noqa: F401
