"""rlhf: the whole RLHF pipeline, humans included, on real Hugging Face models.

Importing this package is cheap: torch, transformers and the web stack load
only in the modules that need them.
"""

__version__ = "0.1.0"

from rlhf.errors import UserError  # noqa: F401
