"""ct's dashboard inside the Airflow UI: server-rendered pages over :mod:`ml.overview`, under ``/ct``.

* :mod:`.app`: the FastAPI app (routes, Airflow's auth);
* :mod:`.render`: the Jinja environment (autoescaped), number and time formats for people;
* :mod:`.charts`: the drift charts, as inline SVG.
"""
