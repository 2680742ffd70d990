import sys

from cxr.cli import main

sys.exit(main())
