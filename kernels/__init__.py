"""Triton kernels and their launchers, one module per op stem (genfast.kernels.<op>).

This package is imported by genfast/backends.py only after ``import triton`` succeeded, and it
stays light: it imports no op module, so nothing here compiles a kernel or touches a GPU or the
Triton driver. The op modules import triton themselves and only launch on a call.

Shared device helpers live in private modules (``_philox``: the Philox noise stream).
"""
