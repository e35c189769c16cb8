"""The data stage: landing batches in, curated shards and manifests out.

* :mod:`ml.data.ingest`: read a landing batch, check it, write its shards and curated manifest;
* :mod:`ml.data.validate`: the Great Expectations suites (``suites/``) and ingest's own named checks;
* :mod:`ml.data.hashindex`: the content-hash index behind the cross-batch duplicate check;
* :mod:`ml.data.curated`: read curated rows back, streamed from their shards;
* :mod:`ml.data.window`: the rows a run trains, evaluates and measures drift on;
* :mod:`ml.data.synthetic`: labelled images generated from NumPy, for tests and benchmarks.
"""
