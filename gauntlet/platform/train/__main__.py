import sys

from gauntlet.platform.train.driver import main

sys.exit(main())
