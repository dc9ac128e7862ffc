"""Runs that span processes: PyTorch's own engine (``torch.distributed``, launched by ``torchrun``).

Every dataset-scale command (``evaluate``, ``bank build``, ``explain``) cuts its items into fixed
chunks of whole batches. A chunk is the unit of work, of resumption and of output: its results
are written atomically by the rank that computed it, and a chunk is computed with the same batches
whatever the world size, so a run with 1, 2 or 8 processes gives the same numbers and a run cut
short with 4 ranks resumes with 2. Ranks take the unfinished chunks in turn
(``todo[rank::world_size]``) and meet after each round, so a rank that fails stops every rank
with one message naming it and the item; rank 0 merges the chunks after the last round.

Launch:

    torchrun --standalone --nproc_per_node=4 -m vitflow evaluate ...          # one machine
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d \\
             --rdzv-endpoint=HOST:29400 --rdzv-id=JOB -m vitflow evaluate ...  # on every machine

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) the same code runs as rank 0 of 1.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch

from vitflow.atomic import atomic_path, write_json_atomic

T = TypeVar("T")


class RankFailure(RuntimeError):
    """A rank of a distributed run failed (or was lost); the message names the rank and the item."""


@dataclass(frozen=True)
class Group:
    """This process's place in the run: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value`` (any JSON-able object), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        out: list = [None] * self.world_size
        torch.distributed.all_gather_object(out, value)
        return out

    def first(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (what it read from disk, for one shared view)."""
        return self.gather(value)[0]


SINGLE = Group()


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or anything that sets ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> tuple[Group, torch.device]:
    """Join the run ``torchrun`` started (NCCL on CUDA, gloo on CPU) and pick this rank's device:
    ``cuda:LOCAL_RANK`` when ``device`` is CUDA. Outside ``torchrun``: ``(SINGLE, device)``."""
    if not launched():
        return SINGLE, device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"rank {rank} has LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} "
                "GPU(s); use --nproc_per_node at most the number of GPUs"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30)
        )
    return Group(rank, world, local), device


def shutdown() -> None:
    """Leave the run together: every rank waits for the others before the process group goes (a
    rank tearing down gloo while a peer still uses it aborts the process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        try:
            torch.distributed.barrier()
        except RuntimeError:  # a peer is gone already (a failed run): nothing to wait for
            pass
        torch.distributed.destroy_process_group()


def chunk_batches(count: int, batch_size: int, chunk_batches: int) -> list[list[range]]:
    """The batches of each chunk: ``count`` items in batches of ``batch_size`` (the last may be
    short), ``chunk_batches`` batches per chunk. Fixed by the counts alone, never by the world size."""
    batches = [range(s, min(s + batch_size, count)) for s in range(0, count, batch_size)]
    return [batches[s : s + chunk_batches] for s in range(0, len(batches), chunk_batches)]


def chunk_keys(plan: list[list[range]], describe_item: Callable[[int], str]) -> list[str]:
    """A short fingerprint per chunk of what its items are (``describe_item(i)`` for each): a chunk
    whose items changed is computed again, one whose items did not is kept (also when the list
    grew, e.g. a larger ``--limit``)."""
    keys = []
    for chunk in plan:
        h = hashlib.sha256()
        for batch in chunk:
            h.update(f"[{len(batch)}]".encode())
            for i in batch:
                h.update(describe_item(i).encode() + b"\n")
        keys.append(h.hexdigest()[:16])
    return keys


def describer(plan: list[list[range]], noun: str, name: Callable[[int], str]) -> Callable[[int], str]:
    """``describe(chunk)`` for ``run_chunks``' failure messages: the chunk, its item numbers
    (1-based) and its first item's ``name``."""

    def describe(chunk: int) -> str:
        first, last = plan[chunk][0][0], plan[chunk][-1][-1]
        return f"chunk {chunk} ({noun} {first + 1}-{last + 1}, starting with {name(first)})"

    return describe


class Ledger:
    """A run's finished chunks on disk: ``folder/state.json`` (the run's settings: model,
    batching, options) and one file per finished chunk, ``chunk_NNNNNN_<key>.<suffix>``, written
    atomically by its rank; ``key`` fingerprints the chunk's items (``chunk_keys``).

    A folder left by a run with other settings is an error when ``strict`` (results a user may
    want), else it is emptied (intermediate files only). A damaged file (a record that does not
    parse, a state file cut short) is never trusted: a chunk's is removed and the chunk run again,
    each named in ``notes``; an unreadable state file counts as other settings."""

    def __init__(
        self, folder: Path, state: dict, keys: list[str], group: Group, strict: bool, what: str
    ) -> None:
        self.folder, self.keys, self.group = Path(folder), keys, group
        self.notes: list[str] = []
        state_file = self.folder / "state.json"
        if group.is_main:
            if state_file.exists():
                old = _read_json(state_file)
                if not isinstance(old, dict):
                    if strict:
                        raise ValueError(
                            f"{state_file} is damaged, so the {what} run there cannot be resumed; "
                            f"remove {self.folder} to start again, or use a new output folder"
                        )
                    self.notes.append(f"{state_file} is damaged; the run starts afresh")
                    old = {}
                if old != state:
                    changed = sorted(k for k in {*old, *state} if old.get(k) != state.get(k))
                    if strict:
                        raise ValueError(
                            f"{self.folder} holds a {what} run with other settings ({', '.join(changed)}); "
                            "rerun with the same ones to resume, or use a new output folder"
                        )
                    for stale in self.folder.glob("chunk_*"):
                        stale.unlink()
            write_json_atomic(state_file, state)
        group.barrier()

    def path(self, chunk: int, suffix: str) -> Path:
        return self.folder / f"chunk_{chunk:06d}_{self.keys[chunk]}{suffix}"

    def todo(self, suffix: str, outputs: Callable[[int], Path | None] | None = None) -> list[int]:
        """The chunks without a finished file, as rank 0 sees them (one view for every rank).
        ``outputs(chunk)``: a file a finished chunk also wrote (its map shard), damaged or missing
        when the chunk must run again."""
        missing: list[int] = []  # only rank 0's view counts
        if self.group.is_main:
            for c in range(len(self.keys)):
                path = self.path(c, suffix)
                if self._finished(path):
                    extra = outputs(c) if outputs is not None else None
                    if extra is None or _safetensors_readable(extra):
                        continue
                    self.notes.append(f"{extra} is missing or damaged; its chunk is run again")
                    path.unlink()
                missing.append(c)
        return self.group.first(missing)

    def _finished(self, path: Path) -> bool:
        """``path`` exists and reads back (a damaged one is removed and said in ``notes``)."""
        if not path.exists():
            return False
        if path.suffix == ".json":
            damaged = not isinstance(_read_json(path), dict)
        else:
            damaged = not _safetensors_readable(path)
        if damaged:
            self.notes.append(f"{path} is damaged; its chunk is run again")
            path.unlink(missing_ok=True)
        return not damaged

    def join_records(self, path: Path) -> dict | None:
        """Write ``path`` (``records.jsonl``) from the finished chunks' ``.json`` files (``{"records":
        [...], "failures": [...]}``), in item order, streaming one chunk at a time; returns
        ``{"failed": N}``, or ``None`` (and no file) when no item could be read."""
        failed, count = 0, 0
        with atomic_path(path) as tmp, open(tmp, "w") as handle:
            for chunk in range(len(self.keys)):
                record = json.loads(self.path(chunk, ".json").read_text())
                failed += len(record["failures"])
                count += len(record["records"])
                for line in record["records"]:
                    handle.write(json.dumps(line) + "\n")
        if count == 0:  # nothing could be read: no records file, not an empty one
            path.unlink()
            return None
        return {"failed": failed}

    def prune(self, suffix: str) -> None:
        """Remove finished files of chunks that are no longer part of the run (rank 0)."""
        if self.group.is_main:
            current = {self.path(c, suffix).name for c in range(len(self.keys))}
            for stale in self.folder.glob(f"chunk_*{suffix}"):
                if stale.name not in current:
                    stale.unlink()


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _safetensors_readable(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return all(handle.get_slice(key).get_shape() is not None for key in handle.keys())
    except Exception:  # noqa: BLE001 - safetensors raises several types for damaged files
        return False


@dataclass
class ChunkedRun:
    """A run cut into chunks of whole batches (``chunk_batches``; ``batches_per_chunk``), its
    ``Ledger``, the chunks still to do (``todo``, the same on every rank) and this rank's
    share of them (``mine``)."""

    plan: list[list[range]]
    ledger: Ledger
    todo: list[int]
    mine: list[int]
    batches_per_chunk: int

    @classmethod
    def open(
        cls, count: int, batch_size: int, chunk_items: int, folder: Path, state: dict,
        describe_item: Callable[[int], str], group: Group, *, strict: bool, what: str, suffix: str,
        outputs: Callable[[int], Path | None] | None = None,
    ) -> ChunkedRun:  # fmt: skip
        """``count`` items in batches of ``batch_size``, about ``chunk_items`` to a chunk (rounded
        up to whole batches); ``state``: the run's settings besides the batching (a folder with
        other settings: see ``Ledger``); finished chunks are files ``*suffix`` (and
        ``outputs``: see ``Ledger.todo``); damaged ones are said in ``ledger.notes``."""
        per_chunk = -(-chunk_items // batch_size)
        plan = chunk_batches(count, batch_size, per_chunk)
        state = {"batch_size": batch_size, "chunk_batches": per_chunk, **state}
        ledger = Ledger(folder, state, chunk_keys(plan, describe_item), group, strict=strict, what=what)
        todo = ledger.todo(suffix, outputs)
        return cls(plan, ledger, todo, todo[group.rank :: group.world_size], per_chunk)

    def items_done(self) -> int:
        """Items in chunks an earlier run finished (for a progress bar)."""
        left = set(self.todo)
        return sum(len(b) for c in range(len(self.plan)) if c not in left for b in self.plan[c])

    def my_batches(self) -> list[list[int]]:
        """This rank's batches, as item indices, in the order it runs them."""
        return [list(b) for c in self.mine for b in self.plan[c]]


def run_chunks(
    group: Group,
    todo: Sequence[int],
    work: Callable[[int], int],
    describe: Callable[[int], str],
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Run ``work(chunk)`` for this rank's share of ``todo``, in rounds of one chunk per rank.

    After each round the ranks exchange how they did: a failure anywhere raises
    ``RankFailure`` on every rank naming the failed rank and ``describe(chunk)``, so no rank
    waits forever and finished chunks stay for the rerun. ``work`` returns the items it finished;
    ``on_progress`` gets the other ranks' counts after each round (rank 0 draws the progress).
    """
    rounds = -(-len(todo) // group.world_size)
    for round_ in range(rounds):
        index = round_ * group.world_size + group.rank
        status: dict = {"done": 0, "error": None}
        if index < len(todo):
            chunk = todo[index]
            try:
                status["done"] = work(chunk)
            except (KeyboardInterrupt, RankFailure):
                raise
            except Exception as error:  # reported to every rank below, then raised everywhere
                if not group.distributed:
                    raise  # one process: the error itself, as without chunks
                text = str(error).strip().splitlines()[0] if str(error).strip() else ""
                name = type(error).__name__
                status["error"] = f"rank {group.rank} failed on {describe(chunk)}: {name}: {text}"
        try:
            statuses = group.gather(status)
        except RuntimeError as error:  # gloo/NCCL: a peer process exited
            raise RankFailure(
                f"rank {group.rank} lost contact with another rank in round {round_ + 1} of {rounds} "
                f"(it was killed or crashed: {str(error).splitlines()[0][:120]}); finished chunks are kept, "
                "rerun the same command to resume"
            ) from None
        errors = [s["error"] for s in statuses if s["error"]]
        if errors:
            raise RankFailure(errors[0] + "; finished chunks are kept, rerun the same command to resume")
        if on_progress is not None:
            on_progress(sum(s["done"] for r, s in enumerate(statuses) if r != group.rank))
