"""Releasing models: the MLflow registry, promotion and rollback under the promotion lease.

* :mod:`ml.release.registry`: versions, the ``@champion`` alias, and loading a version safely;
* :mod:`ml.release.promote`: apply the gate's decision, roll back, force; the decision history;
* :mod:`ml.release.lease`: the lease that serialises every move of ``@champion``.
"""
