"""Entry point of the MIDOG challenge container; the logic is in ``midog.challenge``."""

import sys

from midog.challenge import main

if __name__ == "__main__":
    sys.exit(main())
