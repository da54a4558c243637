import sys

from bclm.cli import main

sys.exit(main())
