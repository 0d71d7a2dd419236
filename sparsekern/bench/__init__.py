"""The benchmark: ``sparsekern-bench`` / ``python -m sparsekern.bench`` (see ``cli.py``).

``cases`` defines the sweeps, ``impls`` what is timed (dense, sparsekern's backends,
torch's BSR and CSR paths), ``timing`` how (interleaved medians), ``runner`` runs a
sweep, ``report`` prints and saves it, ``static`` lists the GPU kernels' resource use
compiled ahead of time. Importing it does nothing else.
"""
