"""``python -m seedx_agent`` runs the CLI."""

import sys

from seedx_agent.cli import main

sys.exit(main())
