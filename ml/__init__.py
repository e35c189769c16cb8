"""ct's domain library: ingest, validate, drift, policy, train, evaluate, gate and registry.

Nothing here imports Airflow. Heavy libraries are imported inside the functions that need
them, so that ``python -m ml gate`` does not pay for torch and ``ml.config`` stays cheap.
"""
