"""Live monitoring: the champion judged on what it serves (drift, a label-free accuracy estimate, late labels).

* :mod:`ml.monitor.estimate`: calibration, the label-free estimate and Wilson intervals (pure);
* :mod:`ml.monitor.live`: the ``monitor`` step that ``ct_monitor`` runs, and its alarms.
"""
