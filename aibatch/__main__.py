"""``python -m aibatch``."""

from aibatch.cli import main

main()
