"""`python -m ernie_cluster.launch --run-dir RUN [--local]`: one training attempt on this node."""

import sys

from .node import main

if __name__ == "__main__":
    sys.exit(main())
