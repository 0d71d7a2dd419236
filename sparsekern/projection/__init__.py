"""Top-k weight projection: keep the k largest-magnitude entries (or blocks) of a weight.

``topk_project.py`` (the entry points and the rule), ``reference.py`` (the sort-based oracle),
``floors.py`` (the floor set without sorting), ``keys.py`` (magnitude keys of the fused
backends), ``sharded.py`` (the exact top-k of a DTensor weight: a radix select over
all-reduced histograms, the weight never gathered), ``backends/`` (registry and one file per
backend), ``triton/`` (the Triton kernels and their launchers).
"""

from .topk_project import ProjectionResult, prepare_projection, projection_backends, topk_project_

__all__ = ["ProjectionResult", "prepare_projection", "projection_backends", "topk_project_"]
