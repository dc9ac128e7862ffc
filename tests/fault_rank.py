"""The ``vitflow`` command with a fault on one rank, for tests/test_distributed.py under torchrun.

    FAULT=raise FAULT_RANK=1 torchrun ... tests/fault_rank.py evaluate ...   # rank 1 raises
    FAULT=kill  FAULT_RANK=1 torchrun ... tests/fault_rank.py evaluate ...   # rank 1 is SIGKILLed

``raise``: rank 1's first batch raises inside the model step. ``kill``: rank 1 dies (SIGKILL,
nothing cleaned up) right after recording its first chunk.
"""

import os
import signal
import sys

from vitflow.cli import main
from vitflow.runs import evaluate as evaluation

if os.environ.get("RANK") == os.environ["FAULT_RANK"]:
    if os.environ["FAULT"] == "raise":

        def failing(*args, **kwargs):
            raise RuntimeError("injected fault")

        evaluation._score_batch = failing
    else:
        record = evaluation.write_json_atomic

        def record_then_die(path, payload):
            record(path, payload)
            os.kill(os.getpid(), signal.SIGKILL)

        evaluation.write_json_atomic = record_then_die

sys.exit(main(sys.argv[1:]))
