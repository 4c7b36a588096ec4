"""The benchmark and quality harness behind `phi2cpu bench` and `python benchmarks/run.py`.

Modules: engines and peer_engines (phi2cpu, llama.cpp, OpenVINO GenAI, ONNX Runtime GenAI, torch
behind one interface), exports (the peers' own exports, cached), worker (each engine
in its own process), assets (cached models), speed, quality, bandwidth, report, run (the CLI).
"""
from __future__ import annotations

from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmark with command-line arguments `argv` (default sys.argv[1:])."""
    from .run import main as run_main

    return run_main(argv)


__all__ = ["main"]
