"""The compiled extension ``sparsekern._C``: optional, loaded on first use, never at import.

An extension built against one torch and loaded by another is not used: torch's C++ interface
is not stable between releases, and a build-isolated ``pip install`` compiles against whatever
torch it downloads into its build environment, not the one that will run it. The backends
that need the extension then give ``unavailable_reason``'s text as theirs.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings

import torch

BUILD_HINT = ("build it against the running torch with `pip install --no-build-isolation -e .` in a checkout "
              "(`pip install --no-build-isolation --no-deps --force-reinstall <source>` for a non-editable install)")


def built_for_torch(built_with: str) -> str | None:
    """The torch version an extension was compiled against, from its ``built_with`` ("torch 2.14.1+cu130, ...")."""
    head = built_with.split(",", 1)[0].split()
    if len(head) == 2 and head[0] == "torch" and head[1] != "unknown":
        return head[1]
    return None


def torch_mismatch(built_with: str, running: str) -> str | None:
    """Why an extension described by ``built_with`` must not run under torch ``running``; None when it may."""
    built = built_for_torch(built_with)
    if built == running:
        return None
    # Exact equality: even a build of the same release for another CUDA (2.14.1+cpu, +cu130) links other libraries.
    built_text = f"torch {built}" if built else f"an unrecorded torch version ({built_with!r})"
    return (f"the compiled extension sparsekern._C was built for {built_text}, but torch {running} is running, "
            f"so it is not used; {BUILD_HINT}")


@functools.lru_cache(maxsize=None)
def _load():
    if importlib.util.find_spec(f"{__package__}._C") is None:
        # Not built (SPARSEKERN_SKIP_EXTENSION=1, or a build without a compiler): a choice, no warning.
        return None, f"the compiled extension sparsekern._C is not built (torch {torch.__version__}); {BUILD_HINT}"
    try:
        from . import _C  # noqa: F401  (built by setup.py)
    except ImportError as err:  # built, but not loadable here: often another torch's build
        why = (f"the compiled extension sparsekern._C is not importable ({' '.join(str(err).split())}) "
               f"under torch {torch.__version__}; {BUILD_HINT}")
        warnings.warn(f"sparsekern: {why}", RuntimeWarning, stacklevel=2)
        return None, why
    why = torch_mismatch(getattr(_C, "built_with", ""), torch.__version__)
    if why:
        warnings.warn(f"sparsekern: {why}", RuntimeWarning, stacklevel=2)
        return None, why
    return _C, None


def extension():
    """The extension module, or None (``unavailable_reason()`` says why)."""
    return _load()[0]


def unavailable_reason(*needed: str) -> str | None:
    """None when the extension is loaded and has every function in ``needed``; else why not."""
    module, why = _load()
    if module is None:
        return why
    missing = [name for name in needed if not hasattr(module, name)]
    if missing:
        built_for = getattr(module, "built_with", "an unknown configuration")
        return f"the compiled extension ({built_for}) lacks {', '.join(missing)}"
    return None
