"""`python -m ernie_cluster.launch --run-dir RUN [--local]`: one training attempt on this node."""

import argparse
import sys
from typing import Optional, Sequence

from .node import NodeLauncher


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ernie_cluster.launch",
                                     description="Run one training attempt on this node (once per node).")
    parser.add_argument("--run-dir", required=True, help="the run directory (holds spec.yaml)")
    parser.add_argument("--local", action="store_true", help="no Slurm: one node, this machine")
    parser.add_argument("--train-module", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    launcher = NodeLauncher(args.run_dir, local=True if args.local else None, train_module=args.train_module)
    return launcher.run().exit_code


if __name__ == "__main__":
    sys.exit(main())
