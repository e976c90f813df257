"""`python -m gpuscope.cli ...`: the `gpuscope` command without its console script."""
import sys

from gpuscope.cli import main

sys.exit(main())
