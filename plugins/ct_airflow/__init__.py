"""The Airflow-facing parts of ct: :mod:`.operators` (what DAGs build tasks from), :mod:`.ui` (the dashboard and
the task links), :mod:`.launcher` (the embedded profile), and the new-data trigger, assets and run keys.

Nothing here imports torch, mlflow, evidently, great_expectations or pandas at module level:
workers re-parse DAG files at every task start, and the scheduler parses them all the time.
"""
