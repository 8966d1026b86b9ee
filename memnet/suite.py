"""``memnet.suite``: the former home of ``memnet suite``, now the package ``memnet.cli.suite``.

Kept so that imports from here and ``python -m memnet.suite`` keep working; it belongs to
the command floor (nothing below the commands may import it).
"""

import sys

from memnet.cli.suite import *
from memnet.cli.suite import __all__, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
