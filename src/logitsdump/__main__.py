"""`python -m logitsdump`."""

import sys

from logitsdump.cli import main

sys.exit(main())
