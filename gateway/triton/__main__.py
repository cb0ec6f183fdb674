"""`python -m gateway.triton --model DIR`: the embedded Triton in the foreground (cli.py)."""

import sys

from gateway.triton.cli import main

sys.exit(main())
