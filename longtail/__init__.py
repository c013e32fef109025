"""longtail: a reproducible pipeline for long-tailed visual recognition.

The package holds the mechanisms (datasets, networks, losses, samplers, the training loop, metrics);
the DVC stages in ``stages/`` wire them to ``params.yaml``. Nothing in here reads params, argv or
fixed paths.
"""

__version__ = "0.1.0"

# The config's checks across sections and registries join ``longtail.config.parse`` here, so that
# ``longtail.config`` imports nothing from the package.
from longtail import validate as _validate  # noqa: F401
