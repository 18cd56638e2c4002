import sys

from gauntlet.platform.report.build import main

sys.exit(main())
