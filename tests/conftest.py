import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

# CUDA tests run on the numba-cuda simulator unless a GPU is present; must be set
# before numba is imported. On a GPU machine the same tests run on the device.
if "NUMBA_ENABLE_CUDASIM" not in os.environ and not os.path.exists("/dev/nvidia0"):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
