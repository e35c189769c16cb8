"""The file MLflow stores with each model version and runs to load it ("models from code").

It only names the model; the code is :mod:`ml.model.pyfunc`, which travels in the version's
``code/`` folder. Nothing imports this module: MLflow executes it.
"""

import mlflow.models

from ml.model.pyfunc import ImageClassifier

mlflow.models.set_model(ImageClassifier())
