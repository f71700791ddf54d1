"""``python -m streamchar.cli``: the ``streamchar`` command."""

import sys

from streamchar.cli import main

if __name__ == "__main__":
    sys.exit(main())
