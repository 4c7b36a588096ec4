"""phi2cpu on Ray (``pip install "phi2cpu[ray]"``).

- :mod:`phi2cpu.ray.serving`: the OpenAI-compatible app of ``phi2cpu serve`` as a Ray Serve
  deployment of N replicas, each one phi2cpu engine with a stated thread count, optionally
  autoscaled between bounds. ``phi2cpu serve --ray --replicas N``, or ``serve run`` with
  ``import_path: phi2cpu.ray:app``.
- :mod:`phi2cpu.ray.batch`: offline inference over Ray Data: ``map_batches`` with an actor pool of
  phi2cpu engines for generation, log-likelihood scoring and perplexity.

Imports are absolute throughout: inside this package ``ray`` is always the Ray package.
"""
from __future__ import annotations

try:
    import ray  # noqa: F401
    from ray import serve as _serve  # noqa: F401
    import ray.data  # noqa: F401
except ImportError as e:  # a clear message instead of a bare "No module named"
    raise ImportError(f"phi2cpu.ray needs Ray Serve and Ray Data ({e.name} is missing): "
                      f"pip install \"phi2cpu[ray]\"", name=e.name) from None

from phi2cpu.ray.batch import Generator, LogLikelihood, Perplexity, generate, perplexity, score
from phi2cpu.ray.serving import AppArgs, ReplicaSettings, app, deployment, run

__all__ = ["AppArgs", "ReplicaSettings", "app", "deployment", "run",
           "Generator", "LogLikelihood", "Perplexity", "generate", "score", "perplexity"]
