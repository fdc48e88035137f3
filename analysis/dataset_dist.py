"""Dataset mode across processes and interruptions: checkpoints for `--resume` (the
accumulator and the reading position, written atomically every few batches) and the
torch.distributed set-up under torchrun (gloo on CPU, nccl on GPU; a timeout so a stuck or dead
rank ends the run with a clear error instead of a hang)."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from analysis.accumulate import DatasetAccumulator
from models.common import UserError, atomic_file, atomic_write

log = logging.getLogger(__name__)

DIST_TIMEOUT_S = 600.0  # torch.distributed collectives give up after this (a dead or stuck rank)


# --- checkpoints (--resume) -----------------------------------------------------------------

@dataclass
class Position:
    """Where one process stands in its source; saved inside each checkpoint."""
    records: int = 0  # records read: the index of the next one
    texts: int = 0  # non-blank texts read, every process's share (what `limit` counts)
    blank: int = 0  # blank records read
    fed: int = 0  # texts this process analysed
    tokens: int = 0  # model tokens this process ran (padding excluded), every session
    truncated: int = 0  # texts this process cut to the token limit
    normed: bool = False  # some batch's layer L had to be the final-normed state
    no_attention: bool = False  # some batch came without attention weights (no head statistics)
    # texts of the window starting at `records` already in the accumulator (batches inside a
    # window are ordered by length, not by id)
    done: list[int] = field(default_factory=list)


def checkpoint_path(folder: str | os.PathLike, rank: int = 0, world: int = 1) -> Path:
    """The checkpoint of one process: FOLDER/accumulator.npz (one process) or
    FOLDER/accumulator.rank{R}of{W}.npz under torchrun."""
    name = "accumulator.npz" if world == 1 else f"accumulator.rank{rank}of{world}.npz"
    return Path(folder).expanduser() / name


def save_checkpoint(path: Path, acc: DatasetAccumulator, position: Position, identity: dict) -> None:
    """The accumulator and the position as ONE file, written through a temporary file and a
    rename: a killed run leaves the previous checkpoint whole (not proof against power loss:
    no fsync). A readable copy of the position goes to progress*.json beside it (information
    only; the .npz is what a resumed run reads)."""
    progress = {**identity, "position": vars(position),
                "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    arrays = acc.state_dict()
    arrays["progress"] = np.array(json.dumps(progress))
    with atomic_file(path) as fh:
        np.savez(fh, **arrays)
    mirror = path.name.replace("accumulator", "progress").replace(".npz", ".json")
    atomic_write(path.with_name(mirror), json.dumps(progress, indent=1))


def load_checkpoint(path: Path, fresh: DatasetAccumulator, identity: dict
                    ) -> tuple[DatasetAccumulator, Position] | None:
    """The saved accumulator and position, or None when there is no checkpoint yet. UserError
    when it is of another model, dataset, settings or number of processes."""
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--resume {folder} is a file; give a folder.")
    others = sorted(p.name for p in folder.glob("accumulator*.npz") if p.name != path.name)
    if not path.is_file():
        if others:
            raise UserError(f"--resume {folder} holds the checkpoint of a run with another number of "
                            f"processes ({others[0]}): resume it with as many processes, or use another "
                            "folder.")
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            saved = json.loads(str(z["progress"]))
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise UserError(f"{path} is not a dataset checkpoint ({exc}); delete it or use another "
                        "--resume folder.") from None
    diff = _differences(saved, identity)
    if diff:
        raise UserError(f"--resume {folder} holds a run of {'; '.join(diff)}. Resume with the same model, "
                        "dataset and settings, or use another --resume folder.")
    acc = DatasetAccumulator.load(path, expect_meta=fresh.meta, device=fresh.device)
    return acc, Position(**saved["position"])


def _differences(saved: dict, ours: dict) -> list[str]:
    out = []
    if saved.get("model") != ours["model"]:
        out.append(f"model '{saved.get('model')}' (this run: '{ours['model']}')")
    if saved.get("fingerprint") != ours["fingerprint"]:
        out.append(f"dataset '{saved.get('source')}' [{saved.get('fingerprint')}] (this run: "
                   f"'{ours['source']}' [{ours['fingerprint']}])")
    s, o = saved.get("settings") or {}, ours["settings"]
    for k in sorted(set(s) | set(o)):
        if s.get(k) != o.get(k):
            out.append(f"{k}={s.get(k)!r} (this run: {o.get(k)!r})")
    return out


# --- torch.distributed ----------------------------------------------------------------------

def init_distributed(timeout_s: float = DIST_TIMEOUT_S, backend: str | None = None) -> tuple[int, int]:
    """(rank, world size). Under torchrun (RANK and WORLD_SIZE > 1 in the environment) the
    process group is initialised here once: nccl when CUDA is available (this process's device
    set to LOCAL_RANK), else gloo, with a `timeout_s` on every collective so a dead or stuck
    process ends the others with an error instead of a hang. (0, 1) otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or "RANK" not in os.environ or not dist.is_available():
        return 0, 1
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    log.info("torch.distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return dist.get_rank(), dist.get_world_size()


def close_distributed() -> None:
    """Destroy the process group if there is one (call once at the end of a torchrun process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exchange_reports(error: Exception | None, report: dict, world: int) -> list[dict]:
    """Every process's report, gathered on all of them; when any process failed, every process
    raises (its own error, or a UserError naming the failed process and its message)."""
    import torch.distributed as dist

    msg = None if error is None else (str(error) if isinstance(error, UserError)
                                      else f"{type(error).__name__}: {error}")
    reports: list = [None] * world
    try:
        dist.all_gather_object(reports, {**report, "error": msg})
    except RuntimeError as exc:  # gloo/nccl: a timeout, or a process that died
        if error is not None:
            raise error from None
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(f"Not every process reported back within the timeout (one is stuck or died; "
                        f"see its own output): {first}") from None
    failed = [(r, p["error"]) for r, p in enumerate(reports) if p["error"]]
    if error is not None:
        raise error
    if failed:
        r, m = failed[0]
        raise UserError(f"Process {r} of {world} failed, so this one stopped too: {m}")
    return reports
