"""`python -m styletransfer.client.cli`: the ``styletransfer`` command."""

import sys

from styletransfer.client.cli import main

sys.exit(main())
