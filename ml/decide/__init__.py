"""The two decisions ct makes on its own: retrain or not, promote or not.

* :mod:`ml.decide.drift`: image statistics, labels, embeddings and the champion's outputs against the reference,
  and whether the shift hurts;
* :mod:`ml.decide.estimate`: the label-free accuracy estimate (calibrated confidence) and Wilson intervals;
* :mod:`ml.decide.policy`: whether drift, age, volume or quality calls for a retrain;
* :mod:`ml.decide.gate`: candidate against champion on paired rows (pure functions);
* :mod:`ml.decide.stats`: the tests the gate uses, and their power;
* :mod:`ml.decide.reign`: alpha spent across the challenges to one champion.
"""
