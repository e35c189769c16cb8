"""What the DAG files build their tasks from.

* :mod:`.step`: ``ct_step()``, the task that runs one ``python -m ml <step>``, as a local subprocess;
* :mod:`.pods`: the same step as a Kubernetes pod (``kubernetes.*`` settings, GPUs, torchrun);
* :mod:`.tasks`: the small tasks around the steps (publishing assets, failing on quarantine);
* :mod:`.approval`: the human approval of a gate decision;
* :mod:`.notify`: failure and decision messages (the webhook).

Nothing is re-exported here: a DAG imports only the module it uses, so that parsing it stays cheap.
"""
