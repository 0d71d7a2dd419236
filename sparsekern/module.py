"""``SparseLinear``: a drop-in for ``nn.Linear`` whose weight is sparse, in blocks or entry by entry."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .dense import MaskLayout, masked_dense_linear
from .element import ElementLayout
from .formats import FORMATS, check_format, choose_format, entry_count, layout_for, whole_blocks  # noqa: F401
from .block.layout import (BlockLayout, block_grid, blockwise_any, check_density, count_for_density,
                           expand_block_mask, normalize_block_size)
from .linear import sparse_linear
from .mask_bits import pack_entries, pack_mask, unpack_mask  # noqa: F401  (re-exported)
from .projection.reference import block_norms, top_blocks  # noqa: F401  (re-exported)
from .projection.topk_project import GRANULARITIES, is_dtensor, prepare_projection

#: The state_dict entry (after the layer's prefix) holding the layout, as ``pack_mask`` bits.
LAYOUT_MASK = "layout_mask"


def _is_conv1d(layer) -> bool:
    """Hugging Face's ``Conv1D`` (``transformers.pytorch_utils``), recognised without importing
    transformers: ``y = x @ weight + bias``, ``weight`` ``[in_features, nf]``."""
    weight = getattr(layer, "weight", None)
    return (type(layer).__name__ == "Conv1D" and isinstance(layer, nn.Module) and hasattr(layer, "nf")
            and isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[1] == layer.nf)


def _local_part(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full``, a plain tensor of ``like``'s (global) shape, laid out as ``like`` is: ``full`` itself
    for a plain ``like``; for a DTensor, the DTensor of its mesh and placements holding this rank's
    part, cut locally (nothing is sent)."""
    if not is_dtensor(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


def _nonzeros(weight: torch.Tensor) -> torch.Tensor:
    """``weight != 0`` as a plain bool tensor of the whole weight; for a DTensor, all-gathered (a
    collective: every rank must call it)."""
    mask = weight.detach() != 0
    return mask.full_tensor() if is_dtensor(mask) else mask


def _version(tensor: torch.Tensor) -> int | None:
    return None if tensor.is_inference() else tensor._version  # inference tensors count no versions


def _check_bool(value, name: str) -> bool:
    # A string such as "no" is truthy: accepting it would silently turn the option on.
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


class SparseLinear(nn.Module):
    """``nn.Linear`` with a sparse weight.

    The same ``weight`` and ``bias`` parameters, shapes and initialisation as ``nn.Linear``;
    a random layout of ``density`` drawn from torch's RNG at construction (and by
    ``reset_parameters``), the weight zeroed outside it: with ``format="element"`` an
    ``ElementLayout``, ``density`` the fraction of entries; otherwise a ``BlockLayout``,
    ``density`` the fraction of active blocks.

    ``format``: ``"auto"`` (the default) runs whichever of dense ``F.linear`` on the masked
    weight, the block kernels or the element kernels is cheapest for the layer's current
    nonzeros on its device and dtype (``sparsekern.formats``), chosen again each time the
    layout changes (construction, projection, ``refresh_layout``, a loaded state_dict, a
    move to another device or dtype); ``"dense"``, ``"block"`` or ``"element"`` hold from
    construction on. ``.format`` is what runs now; ``.layout`` its layout (a ``BlockLayout``
    or an ``ElementLayout``; the dense format keeps the layout whose mask it applies);
    every format computes the same function.

    ``state_dict``: nn.Linear's ``weight`` and ``bias`` (the weight as it is, nonzeros outside
    the layout included) plus ``layout_mask``, the layout's entries as bits (``pack_mask``:
    uint8 ``[out_features, ceil(in_features / 8)]``). Loading one restores exactly that layout,
    so a resumed run computes the same function; a state_dict without it (a dense
    ``nn.Linear``'s) gets the layout of its weight's nonzeros (block format: the blocks holding
    any). A bad entry raises naming its key, with the layer left as it was.

    ``layout_mask`` is a persistent buffer, on the weight's device, rewritten in place whenever
    the layer adopts a layout; one written from outside (DDP's broadcast of rank 0's buffers at
    construction and before each forward; a copy into it) is adopted by the next forward (or
    ``layout``, ``format``, ``to_dense``): a layer computes the function its buffers say, so a
    model wrapped in ``DistributedDataParallel`` computes rank 0's on every rank. Under
    ``torch.compile`` the forward does not look (dynamo cannot trace the check).

    A weight that is a ``DTensor`` (FSDP2's ``fully_shard``): the layout is the whole weight's,
    the same on every rank (FSDP2 runs the forward on the all-gathered weight);
    ``plan_projection``/``apply_projection`` project the shards onto the exact global top-k
    (``topk_project_``), ``refresh_layout`` all-gathers the nonzeros (every rank must call it),
    ``to_dense`` gives an ``nn.Linear`` with DTensor parameters of the same placements.

    Deferred initialisation works as for ``nn.Linear``: built on the meta device (``device=
    "meta"`` or under ``torch.device("meta")``), the layer keeps its layout on the CPU and
    its forward gives the output's shape; ``to_empty()`` then ``reset_parameters()`` or
    ``load_state_dict`` give it values.
    """

    #: The formats a layer can be asked for.
    FORMATS = FORMATS
    #: What ``project_`` keeps by default: single entries ("element") or whole blocks ("block").
    granularity: str = "element"
    #: True for a layer converted from a Hugging Face ``Conv1D``: its ``state_dict`` holds the
    #: weight as Conv1D does, ``[in_features, out_features]`` (the layer itself keeps ``[out, in]``).
    checkpoint_transposed: bool = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 density: float = 0.0625, block_size=32, dense_grad: bool = False, format: str = "auto",
                 device=None, dtype=None):
        super().__init__()
        self._configure(in_features, out_features, density, block_size, dense_grad, format)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty((out_features, in_features), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def _configure(self, in_features, out_features, density, block_size, dense_grad, format="auto"):
        #: What the user asked for: "auto", "dense", "block" or "element".
        self.requested_format = check_format(format)
        self.in_features = in_features
        self.out_features = out_features
        self.density = check_density(density)
        self.block_size = normalize_block_size(block_size)
        self.dense_grad = _check_bool(dense_grad, "dense_grad")

    def reset_parameters(self) -> None:
        """``nn.Linear``'s initialisation, draw for draw, then a new random layout at ``density``
        (drawn on the CPU) with the weight zeroed outside it: what the constructor does."""
        nn.Linear.reset_parameters(self)
        self._adopt(self._random_layout())
        self._mask_weight()

    def _random_layout(self):
        shape, device = (self.out_features, self.in_features), self._layout_device()
        if self.requested_format == "element":
            return ElementLayout.random(shape, self.density, device=device)
        return BlockLayout.random(shape, self.block_size, self.density, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.is_meta:  # deferred initialisation: no values, only the output's shape
            return F.linear(x, self.weight, self.bias)
        if not torch.compiler.is_compiling():  # dynamo cannot trace the check
            # Every forward compares: DDP's buffer sync before each forward keeps the version counter.
            self._adopt_written_layout(compare=True)
        if self._format == "dense":
            return masked_dense_linear(x, self.weight, self._layout, self.bias, mask=self._dense_mask,
                                       dense_weight_grad=self.dense_grad)
        return sparse_linear(x, self.weight, self._layout, self.bias, dense_weight_grad=self.dense_grad)

    # ------------------------------------------------------------------ layout
    @property
    def layout(self):
        """The layout the current format runs (``BlockLayout`` or ``ElementLayout``). A layer
        running dense over entries keeps only their mask; the index is built when asked for."""
        self._adopt_written_layout()
        if isinstance(self._layout, MaskLayout):
            self._layout = self._sparsity = ElementLayout.from_mask(self._layout.mask)
        return self._layout

    @property
    def format(self) -> str:
        """The format that runs now: ``"dense"``, ``"block"`` or ``"element"``."""
        self._adopt_written_layout()
        return self._format

    def _layout_device(self) -> torch.device:
        # A meta layer (deferred initialisation) keeps its layout on the CPU until to_empty().
        return torch.device("cpu") if self.weight.is_meta else self.weight.device

    def _check_materialised(self, action: str) -> None:
        if self.weight.is_meta:
            raise ValueError(f"weight is on the meta device, with no values to {action}: materialise the layer "
                             "first (to_empty() then reset_parameters(), or load_state_dict)")

    def _mask(self) -> torch.Tensor:
        """The layout's entries, bool ``[out_features, in_features]`` on the layout's device."""
        return self._dense_mask if self._dense_mask is not None else self._layout.to_mask()

    def _adopt(self, sparsity, whole=None) -> None:
        """Make ``sparsity`` (a ``BlockLayout``, an ``ElementLayout``, or a ``MaskLayout`` when
        no index was built) the layer's function and choose the format that runs it.
        ``whole``: for entries, the ``BlockLayout`` of exactly them when they are whole blocks
        (then the block kernels are a candidate too)."""
        if self.requested_format == "auto":
            self._format = choose_format(sparsity, self._layout_device(), self.weight.dtype, blocks=whole)
        else:
            self._format = self.requested_format
        self._sparsity, self._whole_blocks = sparsity, whole
        self._layout = layout_for(self._format, sparsity, blocks=whole)
        self._dense_mask = self._layout.to_mask() if self._format == "dense" else None
        self._write_layout_mask(None if self.weight.is_meta else self._packed_layout())

    def _packed_layout(self) -> torch.Tensor:
        """The adopted layout as ``pack_mask`` bits; from the element index where there is one."""
        if isinstance(self._layout, ElementLayout):
            return pack_entries(self._layout.shape, self._layout.row_ptr, self._layout.col_idx)
        return pack_mask(self._mask())

    def _write_layout_mask(self, bits: torch.Tensor | None) -> None:
        """Store ``bits`` (the adopted layout, packed; None on a meta layer) in the ``layout_mask``
        buffer and remember what was written. In place where the buffer can take them: DDP
        broadcasts the buffer tensors it found when it was built, and would never send a new one."""
        buffer = self._buffers.get(LAYOUT_MASK)
        if bits is None:  # meta, like the weight: no values
            if buffer is None or not buffer.is_meta:
                buffer = torch.empty((self.out_features, math.ceil(self.in_features / 8)), dtype=torch.uint8,
                                     device="meta")
                self.register_buffer(LAYOUT_MASK, buffer)
        elif (buffer is not None and buffer.device == bits.device and buffer.shape == bits.shape
              and buffer.dtype == bits.dtype and not buffer.is_inference()):
            with torch.no_grad():
                buffer.copy_(bits)
        else:  # the first layout, or a buffer on another device (a meta layer loaded with assign=True)
            buffer = bits.clone()  # never the remembered bits themselves: those are what a write is compared with
            self.register_buffer(LAYOUT_MASK, buffer)
        self._layout_bits = bits
        # No version yet: the next read compares the bits once. DDP's broadcast before each forward
        # keeps the buffers' version counters (torch.autograd._unsafe_preserve_version_counter), so
        # only a compare tells what it wrote after this layer changed its layout.
        self._layout_written = (buffer, None)

    def _adopt_written_layout(self, compare: bool = False) -> None:
        """Adopt the layout ``layout_mask`` holds if something else wrote it (DDP's broadcast of
        rank 0's buffers, a user's copy into it). ``compare=True`` (the forward) compares the bits
        every time: DDP's sync of the buffers before each forward keeps their version counters, so
        only the bits tell (a compare of ``out * in / 8`` bytes; bits the layer runs already cost
        nothing more). Otherwise (reading ``layout`` or ``format``) the first read after the layer
        wrote the buffer compares, later reads only when its version counter moved."""
        if not self.weight.is_meta and self._sparsity.device != self.weight.device:
            # Moved without _apply: fully_shard moves parameters and buffers to its mesh's device by `.data =`.
            self._move_layout(self.weight.device)
        buffer = self._buffers.get(LAYOUT_MASK)
        written, version = self._layout_written
        if buffer is None or buffer.is_meta or (not compare and buffer is written and version is not None
                                                and buffer._version == version):
            return
        errors = self._checkpoint_errors({LAYOUT_MASK: buffer}, "")
        if errors:
            raise ValueError(f"the layout_mask buffer was replaced by a wrong one: {errors[0]}")
        bits = self._layout_bits
        if bits is not None and buffer.device == bits.device and torch.equal(buffer, bits):
            self._layout_written = (buffer, _version(buffer))
            return
        self._load_layout(buffer, LAYOUT_MASK)

    def _layout_state(self) -> dict:
        """What ``_restore_layout_state`` needs to give the layer back its layout as it is now
        (``Projector``'s rollback of a failed step)."""
        self._adopt_written_layout()
        return dict(vars(self))

    def _restore_layout_state(self, state: dict) -> None:
        vars(self).clear()
        vars(self).update(state)
        # The buffer is the same tensor, written since: it gets the restored layout's bits again.
        self._write_layout_mask(self._layout_bits)

    def _adopt_mask(self, mask: torch.Tensor) -> None:
        """Adopt the entries of the bool ``mask`` (block format: the blocks holding any)."""
        shape = (self.out_features, self.in_features)
        if self.requested_format == "block":
            self._adopt(BlockLayout(blockwise_any(mask, self.block_size), self.block_size, shape))
            return
        entries = ElementLayout(mask)
        whole = None
        if self.requested_format == "auto" and entries.nnz:
            blocks = BlockLayout(blockwise_any(mask, self.block_size), self.block_size, shape)
            whole = blocks if entry_count(blocks) == entries.nnz else None
        self._adopt(entries, whole)

    def refresh_layout(self):
        """Recompute the layout from the weight's nonzeros (block format: the blocks holding any)
        and, with ``format="auto"``, choose the format again."""
        self._check_materialised("refresh the layout from")
        self._adopt_mask(_nonzeros(self.weight))
        return self.layout

    def project_(self, density: float | None = None, *, granularity: str | None = None, min_per_row: int = 0,
                 backend: str | None = None):
        """Keep the weight's largest-magnitude entries (or blocks) at ``density``, in place, and
        rebuild the layout from what is left, in the same pass.

        ``k = count_for_density(density, n)``, ``n`` entries (``granularity="element"``) or
        blocks of ``block_size`` (``"block"``). Defaults (for None): ``self.density`` and
        ``self.granularity``. ``min_per_row`` floors every output row (neuron), in entries
        (blocks). Returns the ``sparsekern.ProjectionResult``; see ``sparsekern.topk_project_``.
        """
        return self.apply_projection(self.plan_projection(density, granularity=granularity,
                                                          min_per_row=min_per_row, backend=backend))

    def plan_projection(self, density: float | None = None, *, granularity: str | None = None,
                        min_per_row: int = 0, backend: str | None = None):
        """The first half of ``project_``: checks and plans, writes nothing (a bad argument
        raises here with the weight untouched). ``apply_projection`` carries it out."""
        if torch.is_inference_mode_enabled():
            # The new layout would be inference tensors: every later training forward would fail.
            raise RuntimeError("project_ / Projector.step under torch.inference_mode() would leave this layer a "
                               "layout that autograd cannot use: call it under torch.no_grad() instead")
        granularity = self.granularity if granularity is None else granularity
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES} (or None: {self.granularity!r}), "
                             f"got {granularity!r}")
        self._check_materialised("project")
        k = self._projection_k(density, granularity)
        return prepare_projection(
            self.weight, k, granularity=granularity,
            block_size=self.block_size, min_per_row=min_per_row, backend=backend,
            element_layout=self._sparsity_of(granularity) == "element" and not self._runs_dense(k),
        )

    def _runs_dense(self, k: int) -> bool:
        """Whether the layer will run dense with at most ``k`` entries: then a projection need
        not list the index (the mask is enough; ``apply_projection`` checks the count after)."""
        if self.requested_format in ("block", "element"):
            return False
        if self.requested_format == "dense":
            return True
        shape = (self.out_features, self.in_features)
        return choose_format(MaskLayout(torch.empty(shape, dtype=torch.bool, device="meta"), k),
                             self.weight.device, self.weight.dtype) == "dense"

    def _sparsity_of(self, granularity: str) -> str:
        """The kind of layout a projection at ``granularity`` leaves: the block format keeps
        the blocks holding nonzeros, the element format the nonzeros; the others follow
        the projection (whole blocks stay blocks, so the block kernels stay a candidate)."""
        if self.requested_format in ("block", "element"):
            return self.requested_format
        return granularity

    def _projection_k(self, density, granularity: str) -> int:
        density = self.density if density is None else check_density(density)
        if granularity == "block":
            n_rows, n_cols = block_grid((self.out_features, self.in_features), self.block_size)
            return count_for_density(density, n_rows * n_cols)
        return count_for_density(density, self.out_features * self.in_features)

    def apply_projection(self, plan):
        """The second half of ``project_``: writes the weight and rebuilds the layout from the
        projection's own pass (its per-block counts, or the element index it listed while
        writing), then, with ``format="auto"``, chooses the format again. ``plan`` must come
        from this layer's ``plan_projection`` (a plan for another weight raises, writing nothing)."""
        if not callable(getattr(plan, "made_for", None)):
            raise TypeError(f"plan must come from plan_projection, got {type(plan).__name__}")
        if is_dtensor(self.weight):
            # Only what every rank sees alike may raise here: a shard changed on one rank is refused by
            # apply() on every rank (a local refusal would leave the other ranks in its collective).
            if getattr(plan, "source", None) is not self.weight:
                raise ValueError("plan was prepared for another weight than this layer's: make it with this "
                                 "layer's plan_projection")
        elif not plan.made_for(self.weight):
            raise ValueError("plan was prepared for another weight than this layer's (or before it changed): make "
                             "it with this layer's plan_projection")
        result = plan.apply()
        shape = (self.out_features, self.in_features)
        if self._sparsity_of(plan.granularity) == "element":
            whole = None
            if self.requested_format == "auto" and result.nnz:
                whole = whole_blocks(result.block_counts, self.block_size, shape)
            entries = result.element_layout
            if entries is None:  # expected to run dense: the mask of what is left is enough
                entries = MaskLayout(_nonzeros(self.weight), result.nnz)
            self._adopt(entries, whole)
        else:
            self._adopt(BlockLayout.from_block_mask(result.block_counts > 0, self.block_size, shape))
        return result

    def _apply(self, fn, *args, **kwargs):
        self._adopt_written_layout()  # the layout to move is the buffer's, whose bits are about to be replaced
        super()._apply(fn, *args, **kwargs)
        if not self.weight.is_meta:
            self._move_layout(self.weight.device)
        return self

    def _move_layout(self, device) -> None:
        # The index lives with the weight; a new device or dtype may favour another format.
        whole = self._whole_blocks.to(device) if self._whole_blocks is not None else None
        self._adopt(self._sparsity.to(device), whole)

    # ------------------------------------------------------------- checkpoints
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.checkpoint_transposed:  # Conv1D's orientation: a plain Conv1D model loads it
            # A view, not a copy: state_dict entries alias the parameters, as nn.Module's do, so an
            # in-place update through them (an EMA over state_dict().values()) reaches the weight.
            destination[prefix + "weight"] = destination[prefix + "weight"].t()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        errors = self._checkpoint_errors(state_dict, prefix)
        if errors:  # reported before anything is written: the layer stays as it was
            error_msgs.extend(errors)
            return
        weight_key, mask_key = prefix + "weight", prefix + LAYOUT_MASK
        # The layout is loaded below, from the bits or the weight's nonzeros: nn.Module would copy the
        # bits into the buffer as they are, and call a plain nn.Linear's state_dict, without them, incomplete.
        loaded = {key: value for key, value in state_dict.items() if key != mask_key}
        if self.checkpoint_transposed and weight_key in state_dict:
            loaded[weight_key] = state_dict[weight_key].t().contiguous()
        super()._load_from_state_dict(loaded, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if mask_key in missing_keys:
            missing_keys.remove(mask_key)
        if mask_key in state_dict:
            self._load_layout(state_dict[mask_key], mask_key)
        elif weight_key in state_dict and not self.weight.is_meta:  # nn.Linear's: its nonzeros are the layout
            self.refresh_layout()

    def _checkpoint_errors(self, state_dict, prefix) -> list[str]:
        """What in ``state_dict`` would fail to load into this layer, found before anything is written."""
        out_features, in_features = self.out_features, self.in_features
        expected = {"weight": ((in_features, out_features) if self.checkpoint_transposed
                               else (out_features, in_features), None),
                    LAYOUT_MASK: ((out_features, math.ceil(in_features / 8)), torch.uint8)}
        if self.bias is not None:
            expected["bias"] = ((out_features,), None)
        errors = []
        for name, (shape, dtype) in expected.items():
            key = prefix + name
            if key not in state_dict:
                continue
            value = state_dict[key]
            is_tensor = isinstance(value, torch.Tensor)
            if is_tensor and tuple(value.shape) == shape and (dtype is None or value.dtype == dtype):
                continue
            problem = "size mismatch" if is_tensor and tuple(value.shape) != shape else "wrong type"
            got = f"{value.dtype} of shape {tuple(value.shape)}" if is_tensor else repr(value)
            errors.append(f"{problem} for {key}: {type(self).__name__}(in_features={in_features}, "
                          f"out_features={out_features}) expects {dtype or 'a tensor'} of shape {shape}, got {got}")
        return errors

    def _load_layout(self, packed: torch.Tensor, key: str) -> None:
        mask = unpack_mask(packed.to(self._layout_device()), self.in_features)
        if self.requested_format == "block" and not self.weight.is_meta:
            covered = expand_block_mask(blockwise_any(mask, self.block_size), self.block_size, mask.shape)
            # This rank's part only (a DTensor weight: its shard), so that no rank waits on another.
            outside = _local_part(covered & ~mask, self.weight)
            nonzero = self.weight.detach() != 0
            if is_dtensor(nonzero):
                outside, nonzero = outside.to_local(), nonzero.to_local()
            if bool((outside & nonzero.to(mask.device)).any()):
                warnings.warn(f"{key} is not whole blocks of {self.block_size}: the block format runs the blocks "
                              "holding any of its entries, and the weight is nonzero in them outside the saved "
                              "layout, so the layer computes another function than the saved one (load it into "
                              "a layer with format='element' or 'auto' to keep it)")
        self._adopt_mask(mask)

    # ------------------------------------------------------------- conversion
    @classmethod
    def from_dense(cls, linear: nn.Module, *, density: float | None, block_size=32, dense_grad: bool = False,
                   format: str = "auto", share_parameters: bool = False) -> "SparseLinear":
        """A ``SparseLinear`` computing ``linear`` restricted to a layout; ``linear`` is an
        ``nn.Linear`` (or a subclass) or a Hugging Face ``Conv1D`` (recognised by its class name
        and ``nf``; its ``[in, out]`` weight is stored ``[out, in]`` like every SparseLinear's,
        and ``checkpoint_transposed`` keeps its state_dict in Conv1D's orientation).

        ``density``: keep the blocks of largest L2 norm (ties: lowest row-major index), or with
        ``format="element"`` the entries of largest magnitude (the projection's rule); ``None``
        keeps the sparsity the weight already has (the layout is its nonzeros; block format: the
        blocks holding any) and sets ``density`` to the layout's measured density. ``format``
        as in the constructor. ``requires_grad`` of weight and bias is kept.

        ``share_parameters=True``: the layer holds ``linear``'s own Parameters (the weight zeroed
        outside the layout, in place), so what they are tied to stays tied and an optimizer built
        before still updates them; not possible for a ``Conv1D``. Default: new Parameters,
        ``linear`` untouched. A weight with NaN or Inf raises ValueError.

        A meta ``linear`` (deferred initialisation) gives a meta layer with a random layout at
        ``density`` (1 when None), as the constructor's on meta: ``to_empty()`` then
        ``reset_parameters()`` or ``load_state_dict`` give it values.
        """
        module = cls._from_dense_unmasked(linear, density=density, block_size=block_size, dense_grad=dense_grad,
                                          format=format, share_parameters=share_parameters)
        module._mask_weight()  # last: with share_parameters, linear's own weight
        return module

    @classmethod
    def _from_dense_unmasked(cls, linear, *, density, block_size, dense_grad, format, share_parameters):
        """``from_dense`` up to, not including, zeroing the weight outside the layout (``_mask_weight``):
        with shared parameters nothing is written, so ``sparsify`` can build every layer first."""
        transposed = _is_conv1d(linear)
        if not (transposed or isinstance(linear, nn.Linear)):
            raise TypeError(f"linear must be an nn.Linear (or a subclass) or a Hugging Face Conv1D, "
                            f"got {type(linear).__name__}")
        if is_dtensor(linear.weight):
            raise TypeError(f"linear ({type(linear).__name__}) has a DTensor weight (sharded, e.g. by fully_shard): "
                            "convert the model (from_dense, sparsify) before sharding it")
        density = None if density is None else check_density(density)
        check_format(format)
        _check_bool(share_parameters, "share_parameters")
        if share_parameters and transposed:
            raise ValueError("share_parameters=True is not possible for a Conv1D: its weight is [in, out], a "
                             "SparseLinear's [out, in]; convert it with share_parameters=False")
        weight = linear.weight.detach()
        weight = weight.t() if transposed else weight
        if not weight.is_meta and not bool(torch.isfinite(weight).all()):
            raise ValueError(f"linear ({type(linear).__name__}) has a weight holding NaN or Inf: no layout can "
                             "be chosen from it")
        out_features, in_features = weight.shape
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._configure(in_features, out_features, 1.0 if density is None else density, block_size,
                          dense_grad, format)
        module.checkpoint_transposed = transposed
        if share_parameters:
            module.weight = linear.weight
            module.register_parameter("bias", linear.bias)
        else:
            module.weight = nn.Parameter(weight.clone(memory_format=torch.contiguous_format),
                                         requires_grad=linear.weight.requires_grad)
            bias = linear.bias
            module.register_parameter("bias", None if bias is None else nn.Parameter(
                bias.detach().clone(), requires_grad=bias.requires_grad))
        block_size = module.block_size
        if weight.is_meta:  # no values to choose from: the constructor's layout on meta
            module._adopt(module._random_layout())
        elif density is None:
            module._adopt_mask(weight != 0)
            module.density = module._sparsity.density
        elif format == "element":
            kept = module.weight.detach().clone()
            prepare_projection(kept, count_for_density(density, kept.numel()), granularity="element").apply()
            module._adopt(ElementLayout.from_weight(kept))
        else:
            scores = block_norms(weight, block_size)
            keep = top_blocks(scores, count_for_density(density, scores.numel()))
            module._adopt(BlockLayout(keep, block_size, (out_features, in_features)))
        return module

    def _mask_weight(self) -> None:
        """Zero the weight outside the layout, in place (a meta weight has nothing to zero)."""
        if not self.weight.is_meta:
            with torch.no_grad():
                self.weight.masked_fill_(_local_part(~self._mask().to(self.weight.device), self.weight), 0)

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` computing the same function (weight zero outside the layout); an
        ``nn.Linear`` also for a layer converted from a ``Conv1D`` (its state_dict is then
        nn.Linear's, ``[out, in]``). A DTensor weight gives DTensor parameters of the same mesh and
        placements, each rank masking its own shard (``.full_tensor()`` gathers one)."""
        self._adopt_written_layout()
        outside = _local_part(~self._mask().to(self.weight.device), self.weight)
        # Built on meta (no initialisation drawn) and given the masked copies as its parameters.
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta",
                           dtype=self.weight.dtype)
        linear.weight = nn.Parameter(self.weight.detach().masked_fill(outside, 0))
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().clone())
        return linear

    def extra_repr(self) -> str:
        block = f", block_size={self.block_size}" if self.format == "block" else ""
        running = f" (running {self.format!r})" if self.requested_format == "auto" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, density={self.density}, "
                f"format={self.requested_format!r}{running}{block}")
