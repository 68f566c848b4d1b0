"""``python -m alphastomics.main <stage> ...``: the design note's spelling of the same entry point."""

import sys

from alphastomics.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
