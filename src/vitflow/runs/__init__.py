"""Dataset-scale jobs: ``explain`` over files, ``evaluate``, Chefer et al.'s protocol, bank
building; all resumable and shared across torchrun ranks through one chunked run
(``vitflow.runs.distributed.ChunkedRun``), with one progress line."""
