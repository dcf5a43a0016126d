"""rlhf: the whole RLHF pipeline, humans included, on real Hugging Face models.

Importing this package is cheap: torch, transformers and the web stack load
only in the modules that need them.
"""

import os as _os

__version__ = "0.1.0"

# OpenMP threads that wait for work sleep instead of spinning, unless the user chose otherwise. Read once,
# when torch loads its OpenMP runtime, so it is set here, before any module imports torch. Spinning
# threads are free only when the process has the cores to itself: on a shared machine they take the
# cores the other threads need (PPO on 2 busy cores: 4-5x the episodes/s passive; docs/runtime.md).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from rlhf.errors import UserError  # noqa: F401
