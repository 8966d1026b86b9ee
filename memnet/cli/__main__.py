"""``python -m memnet.cli``: the ``memnet`` command (as ``python -m memnet``)."""

from memnet.cli import main

if __name__ == "__main__":
    main()
