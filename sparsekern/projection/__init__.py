"""Top-k weight projection: keep the k largest-magnitude entries (or blocks) of a weight."""

from .topk_project import ProjectionResult, prepare_projection, projection_backends, topk_project_

__all__ = ["ProjectionResult", "prepare_projection", "projection_backends", "topk_project_"]
