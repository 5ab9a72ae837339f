"""Benchmarks of aibatch beside gpt4free's client and a bare baseline: ``python -m benchmarks``.

Every client runs in its own process against an emulator in another process; see
``benchmarks/README.md``. This package must stay light: the clients import
:mod:`benchmarks.prompts` and :mod:`benchmarks.clientcli` from it.
"""
