import sys

from stopbudget.cli.main import main

sys.exit(main())
