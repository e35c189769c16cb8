"""Serving the champion: MLflow's scoring server following ``@champion``, and the prediction log.

* :mod:`ml.serve.follower`: load, check and swap to the version behind ``@champion``;
* :mod:`ml.serve.predlog`: the prediction log (hourly Parquet in the lake), written off the request path;
* :mod:`ml.serve.metrics`: the Prometheus metrics;
* :mod:`ml.serve.app`: the service (``python -m ml serve``) that wires them around MLflow's scoring server.
"""
