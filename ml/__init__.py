"""ct's domain library, by stage; it never imports Airflow.

* :mod:`ml.data`: ingest, validation (Great Expectations), the hash index, curated rows, windows;
* :mod:`ml.decide`: drift (Evidently), the retrain policy, the gate and its statistics;
* :mod:`ml.learn`: the train and evaluate steps, embeddings;
* :mod:`ml.release`: the MLflow registry, promotion, rollback and the lease;
* :mod:`ml.serve`: the prediction service that follows ``@champion``, and its prediction log;
* :mod:`ml.monitor`: live monitoring (drift of served images, the label-free accuracy estimate,
  realized accuracy from late labels) and harvesting labelled production images;
* :mod:`ml.model` and :mod:`ml.training`: the torch-only core (network, safe model file, loader, loop);
* at the top, what every stage shares: :mod:`ml.config`, :mod:`ml.storage`, :mod:`ml.layout`,
  :mod:`ml.errors`, :mod:`ml.process`, :mod:`ml.outage`; and :mod:`ml.cli` (``python -m ml``),
  :mod:`ml.overview` (the dashboard's reads) and :mod:`ml.demo` (the four-day scenario).

Heavy libraries are imported inside the functions that need them, so that ``python -m ml gate``
does not pay for torch and ``ml.config`` stays cheap.
"""
