import sys

from gauntlet.platform.eval.driver import main

sys.exit(main())
