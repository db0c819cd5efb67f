"""shadowd: shadow-test ML models in production.

Ray Serve answers every request from the production model and mirrors a
sampled share to a candidate; a comparator checks the pairs per slice; the
inputs worth a human look go to an annotation queue.
"""

from shadowd.config import ShadowdConfig, load_config
from shadowd.errors import ConfigError, ShadowdError
from shadowd.records import AnnotationItem, Label, ModelOutput, Pair

__version__ = "0.1.0"

__all__ = [
    "AnnotationItem",
    "ConfigError",
    "Label",
    "ModelOutput",
    "Pair",
    "ShadowdConfig",
    "ShadowdError",
    "__version__",
    "load_config",
]
