import os
import sys

# Tests import `core` and `tools` from the repository root, as the scripts do.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
