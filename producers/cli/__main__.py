"""`python -m producers.cli`: the same as the `torchfleet` console script."""

from producers.cli import main

main()
