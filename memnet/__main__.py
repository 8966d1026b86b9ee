"""``python -m memnet``: the ``memnet`` command."""

from memnet.cli import main

if __name__ == "__main__":
    main()
