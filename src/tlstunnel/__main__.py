"""``python -m tlstunnel``: the same command line as the ``tlstunnel`` script."""

import sys

from tlstunnel.cli import main

sys.exit(main())
