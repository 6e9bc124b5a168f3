"""Fleet scale: shadow evaluation over many flight recordings and closed-loop robustness sweeps.

Above ``hil/`` (it reuses the simulator's plant and the demo's success criterion), below ``cli/``.
``engine`` runs a job's tasks in this process or on Ray with the same results; ``replay``
and ``sweep`` are the two jobs; ``plant`` the vectorised cart-pole; ``grid`` the sweep's YAML.
"""

# The fleet's kernels (plant, sweep, diffstats) inline each other: importing the runtime first
# points numba's cache at the directory keyed on every kernel source (runtime/jitcache.py).
from ..runtime import jitcache as _jitcache  # noqa: E402, F401
