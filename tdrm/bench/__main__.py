"""`python -m tdrm.bench ...`: arguments are parsed in tdrm/cli.py (the one home of argparse); the
benchmarks themselves (tdrm/bench/__init__.py) never import the command line."""
import sys

from ..cli import bench_main

sys.exit(bench_main())
