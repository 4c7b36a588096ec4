"""Benchmark phi2cpu against its peers on this machine (same code as `phi2cpu bench`).

    python benchmarks/run.py --quick
    python benchmarks/run.py --results-md benchmarks/RESULTS.md
"""
import sys

import phi2cpu.bench

if __name__ == "__main__":
    sys.exit(phi2cpu.bench.main())
