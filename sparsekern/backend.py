"""What a backend is, and how one is chosen: the one pattern of every registry.

A backend computes the products of one format (``sparsekern/<format>/backends/``) or the
top-k projection (``sparsekern/projection/backends/``). Each one declares the devices,
dtypes and block sides it supports and says, for a given call, every reason it cannot run
it. Each of those packages builds one ``Registry`` of its backends, fastest first;
``Registry.select`` walks it: an automatic choice takes the first backend with no reasons; a
forced one (argument or the registry's environment variable, ``SPARSEKERN_BACKEND`` for the
matmul of every format) raises with its reasons. The contract of each registry's backends is
in its package's ``__init__.py``.

Also here, the device rules that every format's "triton" backend (``TritonRules``) and
"cuda" backend (``built_device_reason``) share.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from ._extension import extension, unavailable_reason
from .triton.config import interpreting  # torch-only module: importing it does not import triton

ENV_VAR = "SPARSEKERN_BACKEND"


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run this call; the message lists why."""


class Backend:
    name: str = ""
    devices: tuple[str, ...] = ()
    dtypes: tuple[torch.dtype, ...] = ()
    block_sides: tuple[int, ...] = (16, 32, 64, 128)

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run at all here (missing build, missing package)."""
        return None

    def device_reason(self, device: torch.device) -> str | None:
        if device.type not in self.devices:
            return f"runs on {'/'.join(self.devices)} tensors, not {device.type}"
        return None

    def automatic(self, device: torch.device) -> bool:
        """Whether an automatic choice may pick this backend for ``device``."""
        return True

    def reasons(self, device: torch.device, dtype: torch.dtype, block_size) -> list[str]:
        """Every reason this backend cannot run a call; empty when it can."""
        reasons = []
        why = self.unavailable_reason()
        if why:
            reasons.append(why)
        # No backend can run a CUDA tensor where there is no CUDA device; asking the device's
        # properties there would raise instead of answering.
        why = "no CUDA device here" if device.type == "cuda" and not torch.cuda.is_available() else None
        why = why or self.device_reason(device)
        if why:
            reasons.append(why)
        if dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            reasons.append(f"supports dtypes {names}, not {str(dtype).replace('torch.', '')}")
        bad = [s for s in block_size or () if s not in self.block_sides]
        if bad:
            reasons.append(f"supports block sides {self.block_sides}, not {tuple(block_size)}")
        return reasons

    # The three products (see the module docstring).
    def forward(self, x, weight, bias, row_ptr, col_idx, block_out, block_in):
        raise NotImplementedError

    def grad_input(self, grad_out, weight, col_ptr, row_idx, block_out, block_in):
        raise NotImplementedError

    def grad_weight(self, grad_out, x, block_row, col_idx, block_out, block_in):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<sparsekern backend {self.name!r}>"


class Registry:
    """Backends of one operation, fastest first, and the rules for choosing among them.

    Each format's matmul has one (``sparsekern.block.backends.REGISTRY``,
    ``sparsekern.element.backends.REGISTRY``); the top-k projection
    (``sparsekern.projection.backends.REGISTRY``) has another, with its own override variable.
    """

    def __init__(self, env_var: str, backends=()):
        """``backends``: fastest first, the order an automatic choice tries them."""
        self.env_var = env_var
        self._backends: dict[str, Backend] = {}
        for backend in backends:
            self.register(backend)

    def register(self, backend: Backend) -> Backend:
        self._backends[backend.name] = backend
        return backend

    def get(self, name: str) -> Backend:
        try:
            return self._backends[name]
        except KeyError:
            raise ValueError(f"backend must be one of {sorted(self._backends)}, got {name!r}") from None

    def names(self) -> list[str]:
        """All registered backends, fastest first (the automatic order)."""
        return list(self._backends)

    def available(self, device="cpu", dtype: torch.dtype = torch.float32, block_size=(32, 32)) -> list[str]:
        """Names of the backends that can run on ``device`` for ``dtype`` and ``block_size``, fastest first."""
        device = torch.device(device)
        return [name for name, b in self._backends.items() if not b.reasons(device, dtype, block_size)]

    def automatic_choice(self, device, dtype: torch.dtype, block_size) -> str | None:
        """The backend an automatic choice runs for such a call (the environment variable
        aside), or None when none can."""
        device = torch.device(device)
        for name, backend in self._backends.items():
            if backend.automatic(device) and not backend.reasons(device, dtype, block_size):
                return name
        return None

    def select(self, name: str | None, device: torch.device, dtype: torch.dtype, block_size) -> Backend:
        """The backend to run a call with: forced by ``name`` or the environment variable, else automatic."""
        forced = name if name is not None else os.environ.get(self.env_var) or None
        if forced is not None:
            backend = self.get(forced)
            reasons = backend.reasons(device, dtype, block_size)
            if reasons:
                source = "backend" if name is not None else self.env_var
                raise BackendUnavailableError(
                    f"{source}={forced!r} cannot run this call: " + "; ".join(reasons)
                    + f". Backends that can: {self.available(device, dtype, block_size) or 'none'}"
                )
            return backend
        for backend in self._backends.values():
            if backend.automatic(device) and not backend.reasons(device, dtype, block_size):
                return backend
        details = "; ".join(
            f"{n}: {', '.join(b.reasons(device, dtype, block_size))}" for n, b in self._backends.items()
        )
        raise BackendUnavailableError(f"no backend can run this call ({details})")



class TritonRules(Backend):
    """What every "triton" backend (block or element format, projection) can run, and when it is chosen.

    Runs CUDA tensors, and CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``
    set before triton is imported), which is how it is tested without a GPU. It is never
    chosen automatically for CPU tensors: the interpreter is for checking, not for speed.
    """

    name = "triton"
    devices = ("cuda",)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def unavailable_reason(self):
        if importlib.util.find_spec("triton") is None:
            return "the triton package is not installed"
        return None

    def device_reason(self, device):
        if device.type == "cuda" or (device.type == "cpu" and interpreting()):
            return None
        return f"runs CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), not {device.type}"

    def automatic(self, device) -> bool:
        return device.type == "cuda"


def _runs_on(arch: str, major: int, minor: int) -> bool:
    """A cubin for "8.0" runs on 8.x with x >= 0; an arch-specific one ("9.0a") on 9.0 only;
    "8.0+PTX" also carries PTX, which the driver compiles for any later GPU."""
    if arch.endswith("+PTX"):
        built = tuple(int(v) for v in arch[: -len("+PTX")].rstrip("a").split("."))
        return (major, minor) >= built
    specific = arch.endswith("a")
    built_major, built_minor = (int(v) for v in arch.rstrip("a").split("."))
    if specific:
        return (major, minor) == (built_major, built_minor)
    return major == built_major and minor >= built_minor


def built_device_reason(backend: Backend, device) -> str | None:
    """``device_reason`` of a backend of the compiled CUDA kernels (block or element format,
    projection): the device type, then, once the extension is there, whether it was built for this GPU."""
    why = Backend.device_reason(backend, device)
    if why or backend.unavailable_reason():
        return why
    # The default build holds cubins only (no PTX, unless TORCH_CUDA_ARCH_LIST asks for
    # "+PTX"): a GPU none of the built archs runs on has no kernel image.
    built = extension().cuda_archs.split("/")
    major, minor = torch.cuda.get_device_capability(device)
    if not any(_runs_on(arch, major, minor) for arch in built):
        return f"built for sm {', '.join(built)}, not this GPU's {major}.{minor} (set TORCH_CUDA_ARCH_LIST and rebuild)"
    return None


class CompiledCudaBackend(Backend):
    """What every backend of the compiled CUDA kernels shares (block and element formats):
    its name, devices and dtypes, and why it cannot run (``kernels`` missing from the build, a
    GPU the build has no image for). Subclasses name their ``kernels`` and add the products."""

    name = "cuda"
    devices = ("cuda",)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    kernels: tuple[str, ...] = ()

    def unavailable_reason(self):
        return unavailable_reason(*self.kernels)

    def device_reason(self, device):
        return built_device_reason(self, device)
