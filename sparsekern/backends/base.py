"""What a backend is, and how one is chosen.

A backend computes the three products of a block-sparse linear layer. Each one
declares the devices, dtypes and block sides it supports and says, for a given
call, every reason it cannot run it. ``select`` walks the priority list: an
automatic choice takes the first backend with no reasons; a forced one (argument
or ``SPARSEKERN_BACKEND``) raises with its reasons.

The contract every backend implements (2-D operands; any strides unless the
backend makes them contiguous itself; fp32 accumulation; outputs in the input dtype):

``forward(x[M, K], weight[N, K], bias[N] | None, row_ptr, col_idx, block_out, block_in) -> y[M, N]``
    ``y = x @ W.T + bias`` over active blocks, walking the row-major index.
``grad_input(grad_out[M, N], weight[N, K], col_ptr, row_idx, block_out, block_in) -> dx[M, K]``
    ``dx = grad_out @ W`` over active blocks, walking the column-major index.
``grad_weight(grad_out[M, N], x[M, K], block_row, col_idx, block_out, block_in) -> dW[N, K]``
    ``dW = grad_out.T @ x`` on active blocks only, exact zeros elsewhere.
"""

from __future__ import annotations

import os

import torch

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

    The matmul has one (the module functions below); the top-k projection
    (``sparsekern.projection``) has another, with its own override variable.
    """

    def __init__(self, env_var: str):
        self.env_var = env_var
        self._backends: dict[str, Backend] = {}

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


_MATMUL = Registry(ENV_VAR)
register = _MATMUL.register
get_backend = _MATMUL.get
backend_names = _MATMUL.names
available_backends = _MATMUL.available
select = _MATMUL.select
