"""`python -m app` runs the same entry point as the `mixtral-desk` script."""

import sys

from app.cli.main import main

sys.exit(main())
