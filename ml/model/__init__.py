"""The model: its factory, the safe file it is stored as, and (for serving) its ONNX twin.

Everything in this package imports only torch, torchvision, numpy, Pillow and ct's core (onnxruntime
only inside the parity check), so it runs wherever torch does.
"""

from ml.model.factory import ARCHS, TORCHVISION_ARCHS, ModelBuildError, build_model, check_outputs, head

__all__ = ["ARCHS", "TORCHVISION_ARCHS", "ModelBuildError", "build_model", "check_outputs", "head"]
