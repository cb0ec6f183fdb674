"""`python -m gateway.embedded_triton --model DIR`: the embedded Triton in the foreground."""

import sys

from gateway.embedded_triton.cli import main

sys.exit(main())
