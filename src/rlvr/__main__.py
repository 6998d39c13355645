"""``python -m rlvr``: the ``rlvr`` command (:func:`rlvr.cli.main`)."""

import sys

from rlvr.cli import main

sys.exit(main())
