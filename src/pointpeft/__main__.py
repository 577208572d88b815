import sys

from pointpeft.cli import main

sys.exit(main())
