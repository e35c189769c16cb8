"""Live monitoring: the champion judged on what it serves (drift, a label-free accuracy estimate, late labels).

The estimate itself is :mod:`ml.decide.estimate`, shared with the drift step.

* :mod:`ml.monitor.live`: the ``monitor`` step that ``ct_monitor`` runs, and its alarms.
"""
