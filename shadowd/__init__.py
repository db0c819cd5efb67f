"""shadowd: shadow-test ML models in production.

Ray Serve answers every request from the production model and mirrors a
sampled share to a candidate; a comparator checks the pairs per slice; the
inputs worth a human look go to an annotation queue. Start at
``shadowd.config`` (the config tree), ``shadowd.app`` (the wiring) and
``shadowd.cli``; docs/architecture.md has the module map.

Importing this package imports nothing else, so ``import shadowd.errors``
loads the error tree alone.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
