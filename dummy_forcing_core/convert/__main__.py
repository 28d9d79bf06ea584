"""``python -m dummy_forcing_core.convert ...``: run the command, exit with its code."""
import sys

from .cli import main

sys.exit(main())
