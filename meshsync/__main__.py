import sys

from meshsync.cli.main import main

sys.exit(main())
