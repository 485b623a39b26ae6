"""``python -m devicedefender_audit``."""

import sys

from devicedefender_audit.cli import main

sys.exit(main())
