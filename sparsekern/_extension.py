"""The compiled extension ``sparsekern._C``: optional, loaded on first use, never at import."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def _load():
    try:
        from . import _C  # noqa: F401  (built by setup.py)
    except ImportError as err:
        return None, (
            f"the compiled extension sparsekern._C is not importable ({err}); build it with "
            f"`pip install --no-build-isolation -e .` against the installed torch {torch.__version__}"
        )
    return _C, None


def extension():
    """The extension module, or None."""
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
