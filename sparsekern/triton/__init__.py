"""Triton kernels. Importing this package imports triton (and compiles nothing)."""
