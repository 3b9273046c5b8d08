"""``python -m ucdir_lite``: the ``ucdir-lite`` command."""

import sys

from ucdir_lite.cli import main

if __name__ == "__main__":
    sys.exit(main())
