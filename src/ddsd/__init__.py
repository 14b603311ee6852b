"""ddsd: dynamic dropout self-distillation for small, fast segmentation students.

The method, in the order data flows through it:
``teacher`` (virtual or network probabilities) -> ``difficulty`` (per-pixel distance) -> ``dropout``
(which pixels keep their KD term) -> ``schedules`` (the dropout rate over training) -> ``loss`` (DDSDLoss).
"""

from ddsd import schedules
from ddsd.difficulty import pixel_difficulty
from ddsd.dropout import keep_mask
from ddsd.loss import DDSDLoss, LossOutput
from ddsd.schedules import Capability, Constant, Cosine, Exponential, Linear, Threshold
from ddsd.teacher import teacher_probs, virtual_teacher

__version__ = "0.1.0"

__all__ = [
    "Capability",
    "Constant",
    "Cosine",
    "DDSDLoss",
    "Exponential",
    "Linear",
    "LossOutput",
    "Threshold",
    "__version__",
    "keep_mask",
    "pixel_difficulty",
    "schedules",
    "teacher_probs",
    "virtual_teacher",
]
