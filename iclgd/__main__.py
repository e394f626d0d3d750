import sys

from iclgd.cli import main

sys.exit(main())
