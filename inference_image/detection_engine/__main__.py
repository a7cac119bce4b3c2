"""`python -m detection_engine`: the container's ENTRYPOINT."""

import sys

from detection_engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
