"""``python -m analysis.detect``: runs `analysis.detect.cli.main` (the package itself is imported once)."""
import sys

from analysis.detect.cli import main

sys.exit(main())
