"""The benchmark's optional packages (the ``bench`` extra of pyproject.toml: tqdm, matplotlib).

A plain ``pip install sparsekern`` brings torch and numpy only; each optional package is
imported where it is used, and where it is missing the benchmark goes on without that part
after a one-line note on stderr.
"""

from __future__ import annotations

import importlib
import sys


def optional_module(name: str, without: str):
    """The module ``name``, or None after a note on stderr that the run goes on ``without`` it."""
    try:
        return importlib.import_module(name)
    except ImportError as err:  # not installed, or installed but broken: either way, do without it
        print(f"sparsekern-bench: {without}: {name} cannot be imported ({err}); pip install {name}",
              file=sys.stderr)
        return None
