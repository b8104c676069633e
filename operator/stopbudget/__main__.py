import sys

from stopbudget.cli import main

sys.exit(main())
