"""``python -m ddsd`` (also what ``torchrun -m ddsd`` runs)."""

from ddsd.cli import main

main()
