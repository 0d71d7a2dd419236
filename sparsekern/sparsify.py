"""Weight-sparse training: ``sparsify`` a model, then ``Projector.step()`` after every optimizer step.

    model = sparsekern.sparsify(model, density=1.0, dense_grad=True)  # dense at first
    schedule = sparsekern.DensitySchedule(0.0625, total_steps)  # annealed to 1/16
    optimizer = torch.optim.Adam(model.parameters())
    projector = sparsekern.Projector(model, schedule, min_per_neuron=4)
    for batch in data:
        loss(model(batch)).backward()
        optimizer.step(); optimizer.zero_grad()
        projector.step()

A checkpoint holds ``model.state_dict()``, ``optimizer.state_dict()`` and
``projector.state_dict()``; loaded into objects built the same way, the run continues as if
it had not stopped.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import numbers
import warnings
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from .block.layout import check_density, normalize_block_size
from .formats import check_format
from .module import SparseLinear, _check_bool, _is_conv1d
from .projection.backends import REGISTRY as PROJECTION_BACKENDS
from .projection.topk_project import GRANULARITIES, is_dtensor

logger = logging.getLogger("sparsekern")


def _patterns(value, name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError(f"{name} must be a pattern string or a list of them, got {value!r}")


def _matches(name: str, patterns: list[str]) -> bool:
    # With a "." in front, "*.head" also matches a top-level "head" ("*" may match nothing).
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase("." + name, p) for p in patterns)


def sparsify(model: nn.Module, *, density: float | None, block_size=32, include=None, exclude=None,
             dense_grad: bool = False, format: str = "auto") -> nn.Module:
    """Replace the linear layers of ``model`` by ``SparseLinear.from_dense``, in place.

    What is converted: ``nn.Linear``, its subclasses that do not override ``forward``, and
    Hugging Face's ``Conv1D`` (GPT-2's attention and MLP layers; recognised by class name,
    transformers need not be installed). A module that is linear but cannot be converted
    is left as it is, and one warning lists each such module by name with the reason: a
    subclass overriding ``forward`` (or a forward replaced on the instance), forward hooks
    or a parametrization (the replacement would lose them), ``nn.MultiheadAttention``'s
    ``out_proj`` (attention reads its weight directly and never calls its forward, so sparse
    kernels would never run there), a ``Conv1D`` whose weight another module shares, an
    uninitialised (lazy), non-floating or empty weight, a weight an existing ``SparseLinear``
    holds (converting would zero it outside a second layout and change that layer). The
    warning also names a linear module left dense (not selected, or not convertible) whose
    weight a converted one shares: that weight is sparse now, in both. What was replaced is
    logged at INFO on the ``"sparsekern"`` logger.

    ``density``: the fraction of blocks (``format="element"``: of entries) each layer keeps,
    those of largest magnitude; ``None`` keeps the sparsity the weights already have (each
    layout is its weight's nonzeros): the way to sparsify a sparse checkpoint loaded into a
    dense model (e.g. by ``from_pretrained``) at its own sparsity. Those are the saved layouts
    only where the saved weights are zero outside them (saved right after ``Projector.step``);
    a checkpoint saved between ``optimizer.step()`` and ``Projector.step()`` with momentum or
    ``dense_grad`` has nonzeros outside its layouts: load the full state_dict again after
    ``sparsify`` so its ``layout_mask`` entries set the layouts.

    ``include`` / ``exclude``: ``fnmatch`` patterns (a string or a list), case-sensitive, where
    ``*`` matches any characters, dots included (``?`` one, ``[seq]`` one of ``seq``). A
    pattern is matched against a module's qualified name as in ``model.named_modules()``
    (``"blocks.0.attn.c_attn"``; the model itself is ``""``) and against that name with a
    ``"."`` in front, so ``"*.head"`` matches a top-level ``head`` as well as ``blocks.3.head``
    and ``a.b.head``, but not ``lm_head``; ``"head"`` only the top-level one; ``"*head"`` also
    ``lm_head``. A module is converted when one of its names matches an ``include`` pattern
    (any name, when ``include`` is None) and none matches an ``exclude`` pattern. A module
    registered under several names (one layer used in two places) is one module: it is
    replaced under every name by one ``SparseLinear``, and left (with the warning) when the
    patterns select only some of its names, since replacing it there alone would split it.

    Parameters are shared, not copied: each ``SparseLinear`` holds the ``nn.Linear``'s own
    ``weight`` and ``bias`` (``share_parameters=True``), the weight zeroed outside its layout
    in place. That is what keeps a tied weight tied (an ``lm_head`` whose weight is the token
    embedding's: the embedding is then sparse too, being the same tensor), keeps an optimizer
    built before ``sparsify`` updating the model, keeps ``requires_grad`` and the parameter
    count, and copies nothing; the model is changed in place anyway, so nothing else needs the
    dense original (``copy.deepcopy`` the model first to keep one). Two layers holding one
    weight get one layout. The exception is ``Conv1D``: its weight is ``[in, out]`` and a
    ``SparseLinear``'s ``[out, in]``, so it gets new Parameters: build the optimizer after
    ``sparsify`` when the model has any.

    ``block_size`` and ``format``: every layer's, as in ``SparseLinear``; ``dense_grad=True``
    gives every layer the full dense weight gradient, so entries pruned by a ``Projector`` can
    grow back. Every argument and every weight (NaN or Inf raise ValueError) is checked before
    anything changes. Returns ``model`` (or, when ``model`` itself is converted, its
    replacement).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    density = None if density is None else check_density(density)
    normalize_block_size(block_size)
    check_format(format)
    include, exclude = _patterns(include, "include"), _patterns(exclude, "exclude")

    def selected(name: str) -> bool:
        return (include is None or _matches(name, include)) and not (exclude and _matches(name, exclude))

    found = _LinearLayers(model)
    targets, left = [], []
    for module, names in found.layers():
        chosen = [name for name in names if selected(name)]
        if not chosen:
            continue
        why = found.why_not_converted(module, names)
        if why is None and len(chosen) < len(names):
            why = f"include/exclude select only {_listed(chosen)} of its names"
        if why is None:
            targets.append((module, names))
        else:
            left.append(f"{_listed(names)} ({type(module).__name__}): {why}")
    # A tied weight is zeroed in place for every module holding it, converted or not: say so for linear ones.
    converted_weights = {id(module.weight): names for module, names in targets if not _is_conv1d(module)}
    converted = {id(module) for module, _ in targets}
    for module, names in found.layers():
        source = converted_weights.get(id(module.weight))
        if source is not None and id(module) not in converted:
            left.append(f"{_listed(names)} ({type(module).__name__}): not converted, but its weight is shared with "
                        f"converted {_listed(source)}, so it is sparse now too")
    # Sharing parameters zeroes weights in place: every weight is checked before the first is.
    for module, names in targets:
        weight = module.weight.detach()
        if not weight.is_meta and not bool(torch.isfinite(weight).all()):
            raise ValueError(f"the weight of {_listed(names)} holds NaN or Inf: no layout can be chosen from it "
                             "(sparsify changed nothing)")

    first_of_weight = {}  # id(weight) -> its first SparseLinear, whose layout the others adopt
    replacements = []
    for module, names in targets:  # every layer built (which can still fail) before any weight is zeroed
        new = SparseLinear._from_dense_unmasked(module, density=density, block_size=block_size,
                                                dense_grad=dense_grad, format=format,
                                                share_parameters=not _is_conv1d(module))
        first = first_of_weight.setdefault(id(new.weight), new)
        if first is not new:
            _share_layout(new, first)
        replacements.append((module, names, new))
    for _, _, new in replacements:
        new._mask_weight()

    if left:
        warnings.warn(f"sparsify left {len(left)} linear module(s) as they are:\n  " + "\n  ".join(left),
                      stacklevel=2)
    if replacements:
        logger.info("sparsify replaced %d module(s) by SparseLinear: %s", len(replacements), ", ".join(
            f"{_listed(names)} ({type(old).__name__}, {new.in_features} -> {new.out_features})"
            for old, names, new in replacements))
    result = model
    for _, names, new in replacements:
        for name in names:
            if name == "":
                result = new
            else:
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, new)
    return result


def _listed(names) -> str:
    return " / ".join(repr(name) if name else "the model" for name in names)


def _share_layout(layer: SparseLinear, source: SparseLinear) -> None:
    """Give ``layer``, which holds ``source``'s weight Parameter, ``source``'s layout and format."""
    source._adopt_written_layout()
    layer._adopt(source._sparsity, source._whole_blocks)


class _LinearLayers:
    """The linear layers of a model with every name each is registered under, and what
    keeps ``sparsify`` from converting one."""

    def __init__(self, model: nn.Module):
        self.names: dict[int, list[str]] = {}
        self.modules: dict[int, nn.Module] = {}
        for name, module in model.named_modules(remove_duplicate=False):
            self.names.setdefault(id(module), []).append(name)
            self.modules[id(module)] = module
        # Which modules hold each parameter (a tied weight has several holders).
        self.holders: dict[int, set[int]] = {}
        for key, module in self.modules.items():
            for parameter in module.parameters(recurse=False):
                self.holders.setdefault(id(parameter), set()).add(key)
        self.read_by_attention = {id(m.out_proj): key for key, m in self.modules.items()
                                  if isinstance(m, nn.MultiheadAttention)}

    def layers(self):
        for key, module in self.modules.items():
            if isinstance(module, nn.Linear) or _conv1d_base(module) is not None:
                yield module, self.names[key]

    def why_not_converted(self, module: nn.Module, names: list[str]) -> str | None:
        cls = type(module)
        base = nn.Linear if isinstance(module, nn.Linear) else _conv1d_base(module)
        if base is not nn.Linear and cls is not base:
            return f"a subclass of {base.__name__} (only Conv1D itself is converted)"
        if cls.forward is not base.forward:
            return f"{cls.__name__} overrides {base.__name__}.forward, which SparseLinear would not run"
        if "forward" in vars(module):
            return "its forward is replaced on the instance, which SparseLinear would not run"
        if id(module) in self.read_by_attention:
            attention = _listed(self.names[self.read_by_attention[id(module)]][:1])
            return (f"the out_proj of nn.MultiheadAttention {attention}, which reads out_proj.weight directly and "
                    "never calls its forward: sparse kernels would never run there")
        if nn.parameter.is_lazy(module.weight):  # before the hooks: a lazy module infers its shapes in one
            return "its parameters are not initialised yet (run a forward pass first)"
        if parametrize.is_parametrized(module):
            return "its weight is parametrized (torch.nn.utils.parametrize), which SparseLinear would not keep"
        if module._forward_hooks or module._forward_pre_hooks:
            return "it has forward hooks, which SparseLinear would not run"
        if base is not nn.Linear and not _is_conv1d(module):
            return "its weight is not [in_features, nf] as a Conv1D's is"
        if not module.weight.is_floating_point():
            return f"its weight is {module.weight.dtype}, not floating point"
        if module.weight.numel() == 0:  # a layout needs a shape of two positive sides: from_dense would raise
            return f"its weight is empty ({tuple(module.weight.shape)}): a layout needs at least one entry"
        others = self.holders.get(id(module.weight), set()) - {id(module)}
        sparse_holders = [key for key in others if isinstance(self.modules[key], SparseLinear)]
        if sparse_holders:  # converting would zero the weight outside a new layout under that layer's feet
            shared = _listed(self.names[key][0] for key in sparse_holders)
            return (f"its weight is held by SparseLinear {shared} already, whose layout a new one on the same "
                    "weight would change")
        if base is not nn.Linear and others:
            shared = _listed(self.names[key][0] for key in others)
            return (f"its weight is shared with {shared}, and a Conv1D's weight is transposed into a new "
                    "Parameter, so they would no longer share it")
        return None


def _conv1d_base(module: nn.Module):
    """The class named Conv1D in ``module``'s class hierarchy (Hugging Face's), or None."""
    if not hasattr(module, "nf"):
        return None
    return next((c for c in type(module).__mro__ if c.__name__ == "Conv1D"), None)


def _layout_digest(layer: SparseLinear) -> int:
    """A 64-bit digest of the layout ``layer`` runs (its ``layout_mask`` bits), as a signed int64."""
    layer._adopt_written_layout()
    bits = layer.layout_mask.detach().cpu().contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(bits, digest_size=8).digest(), "little", signed=True)


def _check_layouts_agree(named_layers: list) -> None:
    """Raise on every rank if a layer's layout differs between the ranks of its weight's mesh.

    ``named_layers``: (name, SparseLinear) pairs with DTensor weights. FSDP2 broadcasts nothing,
    and each rank runs the forward on the all-gathered weight with its own layout: a layout
    drawn from another seed on one rank would compute another function there, silently. Per
    mesh, one all-gather (per mesh dimension) of (rank, layer count, digest of every layer's
    digest); only when they differ a second one of every layer's digest, to name the layers.
    Every rank holds the same table, so every rank raises the same error.
    """
    import torch.distributed as dist

    by_mesh: dict = {}
    for name, layer in named_layers:
        by_mesh.setdefault(layer.weight.device_mesh, []).append((name, layer))
    for mesh, layers in by_mesh.items():
        digests = [_layout_digest(layer) for _, layer in layers]
        combined = hashlib.blake2b(b"".join(d.to_bytes(8, "little", signed=True) for d in digests), digest_size=8)
        rank = dist.get_rank()
        table = _mesh_table([rank, len(digests), int.from_bytes(combined.digest(), "little", signed=True)], mesh)
        if bool((table[:, 1:] == table[0, 1:]).all()):
            continue
        ranks = table[:, 0].tolist()
        if bool((table[:, 1] != table[0, 1]).any()):
            counts = ", ".join(f"rank {r}: {n}" for r, n in zip(ranks, table[:, 1].tolist()))
            raise ValueError(f"the ranks hold different numbers of SparseLinear layers with DTensor weights "
                             f"({counts}): every rank must build the same model")
        per_layer = _mesh_table([rank, *digests], mesh)
        differ = per_layer[:, 1:] != per_layer[0, 1:]
        listed = "; ".join(f"{name!r} (ranks {[r for r, d in zip(per_layer[:, 0].tolist(), differ[:, i].tolist()) if d]}"
                           f" differ from rank {int(per_layer[0, 0])})"
                           for i, (name, _) in enumerate(layers) if bool(differ[:, i].any()))
        raise ValueError(f"SparseLinear layouts differ between ranks: {listed}. FSDP2 broadcasts nothing and each rank "
                         "would compute another function: build the model on every rank from the same seed, or load "
                         "one state_dict on every rank")


def _mesh_table(row: list[int], mesh) -> torch.Tensor:
    """Every rank's ``row`` (int64s) over the whole ``mesh``, ``[ranks, len(row)]``: all-gathered along
    each mesh dimension in turn, so every rank ends with the same table, rows in the same order."""
    import torch.distributed as dist

    table = torch.tensor([row], dtype=torch.int64, device=mesh.device_type)
    for dim in range(mesh.ndim):
        group = mesh.get_group(dim)
        gathered = [torch.empty_like(table) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, table, group=group)
        table = torch.cat(gathered)
    return table.cpu()


class Projector:
    """Projects every ``SparseLinear`` of a model onto its scheduled density.

    Call ``step()`` after every ``optimizer.step()``: call ``t`` (from 0) keeps, in every
    layer, the ``count_for_density(schedule(t), n)`` entries (blocks, with
    ``granularity="block"``) of largest magnitude and rebuilds the layer's layout.
    ``min_per_neuron`` keeps at least that many entries (blocks) in every output row.
    ``backend``: one of the projection backends (``sparsekern.projection.backends.REGISTRY``),
    or None for the fastest that can run each layer.

    The optimizer state is left alone (so pruned weights can grow back) unless
    ``zero_pruned_state=True``: then every state tensor shaped like a weight (Adam's
    ``exp_avg`` and ``exp_avg_sq``, SGD's momentum) is zeroed where the weight is zero
    after the projection. An ``optimizer``, when given, must hold every trainable weight
    (one built before ``sparsify`` converted a ``Conv1D`` holds the replaced Parameters).

    A weight held by several layers (tied) is projected once and every holder adopts its
    layout; holders with another ``format`` or ``block_size`` are refused here, since one
    layout would not serve them all.

    Distributed: under DDP every rank runs the same step on the same weights (DDP keeps them
    equal), so the layouts stay equal. Under FSDP2 (``fully_shard``: DTensor weights) each
    rank projects its shards onto the exact top-k of the whole weight and every layer adopts
    the whole weight's layout; every rank must call ``step()`` together. FSDP2 broadcasts
    nothing, so building the Projector checks that every rank holds the same layouts (one
    all-gather of a digest of each layer's ``layout_mask``) and raises on every rank, naming
    the layers that differ, if not.

    A step is all or nothing. Every layer is checked and planned before any is written,
    but writing can still fail (memory running out half-way, since the write allocates what
    depends on what it keeps; a kernel failing to launch; an interrupt), so each weight is
    copied just before it is written and, on a failure, every layer written so far gets its
    weight and layout back: a failed step changes no weight, layout, optimizer state or
    ``steps``. The cost is one copy of the projected weights, on their device, and the time of
    the copy: for the duration of the step on CUDA; on the CPU the copies stay allocated between
    steps, so that a step does not pay the page faults of fresh ones. No exact undo takes less memory in
    the usual case: the write zeroes the entries it does not keep, and with a momentum
    optimizer or ``dense_grad`` every pruned entry has grown back since the last step, so
    nearly the whole weight must be kept; the zeroed values with their indices would cost more.
    On the CPU, into the kept buffers, the copies cost little next to the projection (two fp32
    weights of 8192 x 2048, 2 threads, a 2-core EPYC: 68-84 ms a step against 59-79 ms without
    them; fresh copies took about 150 ms).
    ``rollback=False`` skips them: a step that fails while writing then raises naming the
    layers already projected (each of those holds its new weight and layout; the failing one
    may be half written), and ``steps`` is not advanced.

    ``state_dict()`` / ``load_state_dict()``: plain data (``torch.save`` and
    ``torch.load(weights_only=True)`` work), ``steps`` and the configuration a resumed run
    must share (granularity, min_per_neuron, zero_pruned_state, the layers' shapes);
    loading one from another configuration raises ValueError naming what differs. The
    backend is not part of it (every backend keeps the same entries), nor the schedule (a
    function of the step the caller rebuilds).
    """

    def __init__(self, model: nn.Module, schedule, *, granularity: str = "element", min_per_neuron: int = 0,
                 zero_pruned_state: bool = False, optimizer: torch.optim.Optimizer | None = None,
                 backend: str | None = None, rollback: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        _check_bool(rollback, "rollback")
        named = [(name, m) for name, m in model.named_modules() if isinstance(m, SparseLinear)]
        if not named:
            raise ValueError("model holds no SparseLinear (use sparsekern.sparsify first)")
        if not callable(schedule):
            raise TypeError(f"schedule must be callable step -> density, got {type(schedule).__name__}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if isinstance(min_per_neuron, bool) or not isinstance(min_per_neuron, numbers.Integral) or min_per_neuron < 0:
            raise ValueError(f"min_per_neuron must be an int >= 0, got {min_per_neuron!r}")
        _check_bool(zero_pruned_state, "zero_pruned_state")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if zero_pruned_state and optimizer is None:
            raise ValueError("zero_pruned_state=True needs the optimizer")
        if backend is not None:
            if not isinstance(backend, str):
                raise TypeError(f"backend must be a str or None, got {type(backend).__name__}")
            PROJECTION_BACKENDS.get(backend)  # ValueError listing the valid names
        self.layers = [m for _, m in named]
        self._names = {id(m): name for name, m in named}
        self._weight_groups()  # refuses tied layers one layout cannot serve
        if optimizer is not None:
            held = {id(p) for group in optimizer.param_groups for p in group["params"]}
            missing = [name for name, m in named if m.weight.requires_grad and id(m.weight) not in held]
            if missing:
                raise ValueError(f"optimizer does not hold the weight of {_listed(missing)} (was it built before "
                                 "sparsify replaced them? build it after)")
        self.schedule = schedule
        self.granularity = granularity
        self.min_per_neuron = int(min_per_neuron)
        self.zero_pruned_state = zero_pruned_state
        self.rollback = rollback
        self._undo_buffers: dict[int, torch.Tensor] = {}  # id(weight) -> its kept undo copy (CPU)
        self.optimizer = optimizer
        self.backend = backend
        self.steps = 0
        for layer in self.layers:  # a layout DDP broadcast into the buffers, taken now (a compiled forward would not)
            layer._adopt_written_layout()
        # Last, after every check of this rank alone: a collective that every rank reaches.
        _check_layouts_agree([(name, m) for name, m in named if is_dtensor(m.weight)])

    def _weight_groups(self) -> list[list[SparseLinear]]:
        """The layers grouped by the weight Parameter they hold, in model order; the first of
        each group is projected, the others adopt its layout."""
        groups: dict[int, list[SparseLinear]] = {}
        for layer in self.layers:
            groups.setdefault(id(layer.weight), []).append(layer)
        for first, *others in groups.values():
            for layer in others:
                for attribute in ("requested_format", "block_size"):
                    mine, theirs = getattr(first, attribute), getattr(layer, attribute)
                    if mine != theirs:
                        names = _listed([self._names[id(first)], self._names[id(layer)]])
                        raise ValueError(
                            f"SparseLinear {names} hold one weight, projected once for both, but their "
                            f"{attribute.replace('requested_', '')} differ ({mine!r} and {theirs!r}): one "
                            "layout cannot serve both; give them the same")
        return list(groups.values())

    def step(self) -> list:
        """Project every layer at ``schedule(self.steps)``; returns their ``ProjectionResult``s
        (in the order of ``self.layers``; layers sharing a weight share one)."""
        density = check_density(self.schedule(self.steps), "schedule(step)")
        groups = self._weight_groups()
        # Every layer planned (and checked) before any is written.
        plans = [group[0].plan_projection(density, granularity=self.granularity, min_per_row=self.min_per_neuron,
                                          backend=self.backend) for group in groups]
        results = {}
        # apply_projection writes the weight in place and adopts a new layout: a copy of the weight
        # (a DTensor's is of its shard) and each layer's layout state undo both.
        undo = []
        kept: dict[int, torch.Tensor] = {}  # this step's undo buffers (see _undo_copy)
        try:
            for group, plan in zip(groups, plans):
                first = group[0]
                saved = self._undo_copy(first.weight, kept) if self.rollback else None
                undo.append((group, saved, [layer._layout_state() for layer in group]))
                result = first.apply_projection(plan)
                for layer in group[1:]:
                    _share_layout(layer, first)
                results.update((id(layer), result) for layer in group)
            # The masks (allocations that can fail) before the first state tensor is changed.
            pruned = [(group[0].weight, group[0].weight.detach() == 0) for group in groups
                      if self._weight_shaped_state(group[0].weight)] if self.zero_pruned_state else []
        except BaseException as failure:
            if not self.rollback:
                written = ", ".join(repr(self._names[id(group[0])]) for group, _, _ in undo) or "none"
                raise RuntimeError(f"Projector.step failed with rollback=False after writing layers: {written} "
                                   "(the last one may be half written, the others hold their new weights and "
                                   "layouts; steps was not advanced)") from failure
            for group, weight, states in reversed(undo):
                group[0].weight.detach().copy_(weight)
                for layer, state in zip(group, states):
                    layer._restore_layout_state(state)
            raise
        for weight, mask in pruned:
            for value in self._weight_shaped_state(weight):
                value.masked_fill_(mask, 0)
        self._undo_buffers = kept
        self.steps += 1
        return [results[id(layer)] for layer in self.layers]

    def _undo_copy(self, weight, kept: dict) -> torch.Tensor:
        """A copy of ``weight`` to undo its write with. On the CPU it goes into a buffer kept
        from the last step: a fresh one costs its page faults every step (about 25 ms for 64 MB,
        as long as the copy itself), where CUDA's caching allocator reuses memory anyway."""
        w = weight.detach()
        buffer = self._undo_buffers.get(id(weight))
        if (w.device.type != "cpu" or is_dtensor(w) or buffer is None or buffer.shape != w.shape
                or buffer.dtype != w.dtype):
            buffer = w.clone()
        else:
            buffer.copy_(w)
        if w.device.type == "cpu" and not is_dtensor(w):
            kept[id(weight)] = buffer
        return buffer

    def _weight_shaped_state(self, weight) -> list[torch.Tensor]:
        state = self.optimizer.state.get(weight, {})
        return [v for v in state.values() if isinstance(v, torch.Tensor) and v.shape == weight.shape]

    # ---------------------------------------------------------------- checkpoints
    def _configuration(self) -> dict:
        return {"granularity": self.granularity, "min_per_neuron": self.min_per_neuron,
                "zero_pruned_state": self.zero_pruned_state,
                "layer_shapes": [[layer.out_features, layer.in_features] for layer in self.layers]}

    def state_dict(self) -> dict:
        """``steps`` and the configuration ``load_state_dict`` checks, as plain data."""
        return {"steps": self.steps, **self._configuration()}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Continue from ``state_dict`` (``state_dict()`` of a Projector of the same
        configuration): the next ``step()`` is its step ``steps``. Raises ValueError naming
        what differs, with nothing changed."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping (Projector.state_dict()), got {type(state_dict).__name__}")
        mine = self._configuration()
        missing = sorted({"steps", *mine} - set(state_dict))
        unexpected = sorted(set(state_dict) - {"steps", *mine})
        if missing or unexpected:
            raise ValueError(f"state_dict is not a Projector's: missing keys {missing}, unexpected keys {unexpected}")
        for key, value in mine.items():
            theirs = state_dict[key]
            if key == "layer_shapes":
                self._check_shapes(theirs, value)
            elif theirs != value:
                raise ValueError(f"state_dict is from a Projector with {key}={theirs!r}, this one has {value!r}")
        steps = state_dict["steps"]
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
            raise ValueError(f"state_dict['steps'] must be an int >= 0, got {steps!r}")
        self.steps = int(steps)

    def _check_shapes(self, theirs, mine) -> None:
        try:
            theirs = [[int(n) for n in shape] for shape in theirs]
        except (TypeError, ValueError):
            raise ValueError(f"state_dict['layer_shapes'] must be a list of [out, in] pairs, got {theirs!r}") from None
        if len(theirs) != len(mine):
            raise ValueError(f"state_dict is from a Projector of {len(theirs)} layers, this one has {len(mine)}")
        for i, (a, b) in enumerate(zip(theirs, mine)):
            if a != b:
                name = self._names[id(self.layers[i])]
                raise ValueError(f"state_dict's layer {i} has shape {a} (out, in); this Projector's layer {i}, "
                                 f"{name!r}, has {b}")
