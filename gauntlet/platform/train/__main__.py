"""`python -m gauntlet.platform.train ...`: the `gauntlet train` command (for `ray job submit`)."""

import sys

from gauntlet.platform.train.driver import main

sys.exit(main())
