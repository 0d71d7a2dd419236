"""Circuits: prune a trained model to the smallest set of nodes that still does a task.

The method of the weight-sparse transformers (Gao et al. 2025, section 2.2): a learned mask on
every node of named sites (one scalar per node shared by every token and prompt, a Heaviside
step with a sigmoid surrogate gradient), pruned nodes mean-ablated, the task loss plus a
penalty on the kept nodes, the model's weights frozen; then a bisection on the number of kept
nodes to a target task loss, with a fitted logit scale and shift. A ``Circuit``'s size is its
edges: nonzero weights between kept nodes, through the matrices a ``CircuitGraph`` declares.

Import it as ``sparsekern.circuits`` (``import sparsekern`` does not import it).
"""

from .ablation import node_means
from .circuit import Circuit, evaluate_circuit
from .graph import CircuitGraph, MatrixEdges, count_edges, effective_weight
from .masks import HeavisideSigmoid, NodeMasks, heaviside_sigmoid
from .prune import PruneConfig, bisect_nodes, find_circuits, frozen, learn_masks, ranked_nodes
from .task import BinaryTask, binary_loss, candidate_logits, fit_logit_affine, task_loss

__all__ = [
    "BinaryTask",
    "Circuit",
    "CircuitGraph",
    "HeavisideSigmoid",
    "MatrixEdges",
    "NodeMasks",
    "PruneConfig",
    "binary_loss",
    "bisect_nodes",
    "candidate_logits",
    "count_edges",
    "effective_weight",
    "evaluate_circuit",
    "find_circuits",
    "fit_logit_affine",
    "frozen",
    "heaviside_sigmoid",
    "learn_masks",
    "node_means",
    "ranked_nodes",
    "task_loss",
]
