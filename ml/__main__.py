"""``python -m ml``: run one step, then leave without running native libraries' exit-time teardown.

pyarrow's thread pools can abort the interpreter at exit (SIGABRT, "terminate called without an
active exception"; apache/arrow#34314) after the step has printed its result. The result is
already on stdout and every write is durable, so flush and ``os._exit``: the exit code is the
step's, never a crash after success.
"""

import logging
import os
import sys

from ml.cli import main

code = main()
sys.stdout.flush()
sys.stderr.flush()
logging.shutdown()
os._exit(code)
