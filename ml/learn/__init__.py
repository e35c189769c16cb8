"""The learning stage: the train and evaluate steps, and the champion's embeddings for drift.

These wire the torch-only core (:mod:`ml.model`, :mod:`ml.training`) to the lake and to MLflow.
"""
