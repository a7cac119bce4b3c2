"""`python -m detection_engine`: the container's ENTRYPOINT."""

import logging
import os
import sys

from detection_engine.cli import main

if __name__ == "__main__":
    code = main()
    # Every output file is written (flushed, renamed) by now, so the process ends here, without the
    # interpreter's teardown: that joins every fetch thread, and one stuck in a read past its deadline (a
    # hung network mount, blocked in the kernel) would hold the pod forever; it also runs the collector
    # over torch's millions of objects (BENCHMARKS.md: engine teardown).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
