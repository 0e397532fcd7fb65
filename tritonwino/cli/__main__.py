"""``python -m tritonwino.cli`` is the ``tritonwino`` console script."""

import sys

from . import main

sys.exit(main())
