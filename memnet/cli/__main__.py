"""`python -m memnet.cli`: the `memnet` command (the suite starts its runs this way)."""

from memnet.cli import main

main()
