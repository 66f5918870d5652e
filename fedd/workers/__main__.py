"""`python -m fedd.workers --config FILE`: one worker, started by the supervisor (never by hand)."""

import signal
import sys

# a reload passed on while this worker is still starting must not kill it (SIGHUP's default): it
# reads the configuration as it is when it builds, and installs the reload handler before serving
signal.signal(signal.SIGHUP, signal.SIG_IGN)

from fedd.tap import run_worker  # noqa: E402 (after the signal disposition, on purpose)

run_worker(sys.argv[1:])
