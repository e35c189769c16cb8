"""The Airflow-facing parts of ct: the step operator, the new-data trigger, links and helpers.

Nothing here imports torch, mlflow, evidently, great_expectations or pandas at module level:
workers re-parse DAG files at every task start, and the scheduler parses them all the time.
"""
