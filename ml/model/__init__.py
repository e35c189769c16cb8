"""The model: its factory, the safe file it is stored as, its preprocessing and its served form.

Import the modules themselves (``ml.model.factory``, ``ml.model.artifact``, ...): this package
imports nothing, so that the served form (:mod:`ml.model.pyfunc`, with :mod:`ml.model.preprocess`)
loads where torch is not installed. The factory, the artifact and the preprocessing import only
torch, torchvision, numpy, Pillow and ct's core (onnxruntime only inside the parity check); the
served form runs on numpy, pandas, Pillow, onnxruntime and MLflow alone.
"""
