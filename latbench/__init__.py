"""latbench: measure operator and network latency on real devices.

Importing this package stays cheap (no torch, no onnxruntime): the CLI and the
`predictors` package import it on every start.
"""

__version__ = "0.1.0"

from latbench.errors import LatbenchError, UsageError  # noqa: E402
from latbench.ops import OpSpec, Network  # noqa: E402

__all__ = ["LatbenchError", "UsageError", "OpSpec", "Network", "__version__"]
