"""`python -m cnnviz_fast ARGS`: the `cnnviz-fast` command line (see `cnnviz_fast.cli`)."""
import sys

from .cli import main

sys.exit(main())
