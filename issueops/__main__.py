import sys

from issueops.cli import main

sys.exit(main())
