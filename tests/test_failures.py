"""The runner's floors when things go wrong: corrupt checkpoints, temporary files of killed writers,
full disks, locks held by other processes, a runner that dies under its kernel.

A full disk is injected at the one place both writers reach the disk (os.fsync, called on every
file before its rename): a real small file system needs a root mount this machine does not allow.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from nnrandomness import cell, store, train
from nnrandomness.cell import run_cell
from nnrandomness.data import load_dataset
from nnrandomness.train import CHECKPOINT, ReplicaSpec, load_checkpoint, train_replica

TINY = ReplicaSpec(dataset="digits", model="smallcnn", epochs=3, lr=2e-3, threads=1)
DEAD_PID = 999_999_999  # above any pid_max Linux allows: never a live process


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def whole(digits):
    """TINY trained without interruption (no checkpoints)."""
    return store.weights_hash(train_replica(TINY, digits).weights)


class Interrupted(Exception):
    """Stands for a kill right after a checkpoint landed."""


def interrupt_after(monkeypatch, saves: int) -> None:
    """Make train_replica stop right after its `saves`-th checkpoint is written."""
    calls, real = [], train.save_checkpoint

    def save(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == saves:
            raise Interrupted

    monkeypatch.setattr(train, "save_checkpoint", save)


def fail_fsync(monkeypatch, error: int, at: int) -> list[Path]:
    """os.fsync raises OSError(error) on its `at`-th call (1-based); returns the paths fsynced."""
    seen, real = [], os.fsync

    def fsync(fd):
        seen.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        if len(seen) == at:
            raise OSError(error, os.strerror(error))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if ".tmp-" in p.name)


# ----------------------------------------------------------------------------- checkpoints
def damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "flipped":
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(raw)
    else:  # a checkpoint of the old format (or anybody's torch file): no checksum
        path.write_bytes(raw[raw.index(b"\n") + 1 :])


@pytest.mark.parametrize("how", ["truncated", "flipped", "unchecksummed"])
def test_corrupt_checkpoint_is_set_aside_and_the_replica_restarts_to_the_same_bits(
    tmp_path, digits, whole, monkeypatch, how
):
    with monkeypatch.context() as m:
        interrupt_after(m, 2)  # killed after epoch 2 of 3
        with pytest.raises(Interrupted):
            train_replica(TINY, digits, checkpoint_dir=tmp_path)
    ckpt = tmp_path / CHECKPOINT
    assert load_checkpoint(ckpt)["epoch"] == 2
    damage(ckpt, how)
    with pytest.warns(
        RuntimeWarning, match=re.escape(f"checkpoint {ckpt} is corrupt (") + ".*moved to checkpoint.pt.corrupt-1"
    ):
        resumed = train_replica(TINY, digits, checkpoint_dir=tmp_path)
    assert resumed.resumed_from_epoch is None  # from scratch
    assert store.weights_hash(resumed.weights) == whole
    assert (tmp_path / "checkpoint.pt.corrupt-1").exists() and load_checkpoint(ckpt)["epoch"] == 3


def test_a_second_corrupt_checkpoint_gets_the_next_number(tmp_path, digits):
    (tmp_path / "checkpoint.pt.corrupt-1").write_bytes(b"an earlier one")
    (tmp_path / CHECKPOINT).write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="corrupt-2"):
        train_replica(dataclasses.replace(TINY, epochs=1), digits, checkpoint_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt.corrupt-1").read_bytes() == b"an earlier one"


class Planted:
    """An object whose unpickling would run code (a checkpoint from elsewhere)."""

    def __reduce__(self):
        return (Path.touch, (Path(os.environ["NNR_TEST_PLANTED"]),))


def test_checkpoints_load_with_weights_only_and_run_no_code(tmp_path, digits, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setenv("NNR_TEST_PLANTED", str(marker))
    buffer = io.BytesIO()
    torch.save({"spec": TINY.to_dict(), "epoch": 1, "evil": Planted()}, buffer)
    payload = buffer.getvalue()  # correctly checksummed: only weights_only stands in the way
    header = b"nnrandomness-checkpoint-1 " + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    (tmp_path / CHECKPOINT).write_bytes(header + payload)
    with pytest.raises(train.CorruptCheckpoint, match="torch cannot load it"):
        load_checkpoint(tmp_path / CHECKPOINT)
    with pytest.warns(RuntimeWarning, match="is corrupt"):
        train_replica(dataclasses.replace(TINY, epochs=1), digits, checkpoint_dir=tmp_path)
    assert not marker.exists()


def test_everything_a_real_checkpoint_holds_loads_with_weights_only(tmp_path, digits):
    """Generator states, optimiser state, the history's floats: all under weights_only=True."""
    train_replica(dataclasses.replace(TINY, epochs=1, setting="ALGO"), digits, checkpoint_dir=tmp_path)
    raw = (tmp_path / CHECKPOINT).read_bytes()
    state = torch.load(io.BytesIO(raw[raw.index(b"\n") + 1 :]), weights_only=True)
    assert set(state) == {"spec", "epoch", "model", "optimizer", "generators", "history", "train_seconds"}
    assert all(s.dtype == torch.uint8 for s in state["generators"].values())


# ----------------------------------------------------------------------------- temporary files
def test_a_failed_checkpoint_write_leaves_no_temporary_and_keeps_the_last_checkpoint(tmp_path, digits, monkeypatch):
    with monkeypatch.context() as m:
        fail_fsync(m, errno.EIO, at=2)  # the second epoch's checkpoint
        with pytest.raises(OSError) as raised:
            train_replica(TINY, digits, checkpoint_dir=tmp_path)
    assert raised.value.errno == errno.EIO  # not a full disk: passed through as it was
    assert leftovers(tmp_path) == [] and load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 1


def test_dead_writers_temporaries_are_swept_and_a_finished_replica_holds_only_its_files(tmp_path, whole):
    path = store.replica_dir(tmp_path, "cpu-1t", TINY.dataset, TINY.model, TINY.setting, 0)
    path.mkdir(parents=True)
    for name in (f"checkpoint.pt.tmp-{DEAD_PID}", f"manifest.json.tmp-{DEAD_PID}", "weights.safetensors.tmp-1"):
        (path / name).write_bytes(b"half a file")
    row = run_cell(TINY, 1, tmp_path, "cpu-1t", progress=False).iloc[0]
    assert row["weights_hash"] == whole
    assert sorted(p.name for p in path.iterdir()) == sorted([*store.FILES, store.MANIFEST])


def test_train_sweeps_only_the_checkpoint_temporaries_of_dead_writers(tmp_path, digits):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (DEAD_PID, live.pid):
            (tmp_path / f"checkpoint.pt.tmp-{pid}").write_bytes(b"half a file")
        train_replica(dataclasses.replace(TINY, epochs=1), digits, checkpoint_dir=tmp_path)
        assert leftovers(tmp_path) == [f"checkpoint.pt.tmp-{live.pid}"]  # a live writer's is its own
    finally:
        live.kill()
        live.wait()


# ----------------------------------------------------------------------------- full disk
def test_disk_full_during_a_checkpoint_says_so_and_what_was_kept(tmp_path, digits, monkeypatch):
    with monkeypatch.context() as m:
        fail_fsync(m, errno.ENOSPC, at=3)
        with pytest.raises(OSError) as raised:
            train_replica(TINY, digits, checkpoint_dir=tmp_path)
    assert raised.value.errno == errno.ENOSPC
    assert str(raised.value) == (
        f"[Errno 28] no space left on {tmp_path} while writing checkpoint.pt; kept: the checkpoint after epoch 2"
    )
    assert leftovers(tmp_path) == [] and load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 2
    with monkeypatch.context() as m:
        fail_fsync(m, errno.ENOSPC, at=1)
        with pytest.raises(OSError, match=r"checkpoint.pt; kept: nothing \(this was the first checkpoint\)"):
            train_replica(TINY, digits, checkpoint_dir=tmp_path / "fresh")


@pytest.mark.parametrize("at, name", [(1, "predictions.parquet"), (3, "weights.safetensors"), (4, "manifest.json")])
def test_disk_full_while_storing_a_replica_leaves_nothing_that_looks_complete(tmp_path, monkeypatch, at, name):
    spec = dataclasses.replace(TINY, epochs=1)
    path = store.replica_dir(tmp_path, "cpu-1t", spec.dataset, spec.model, spec.setting, 0)
    result = train_replica(spec, checkpoint_dir=path)
    with monkeypatch.context() as m:
        written = fail_fsync(m, errno.ENOSPC, at=at)
        with pytest.raises(OSError) as raised:
            store.write_replica(tmp_path, "cpu-1t", result)
    assert written[-1].name.startswith(f"{name}.tmp-")
    assert raised.value.errno == errno.ENOSPC
    assert str(raised.value).startswith(f"[Errno 28] no space left on {path} while writing {name}; kept: {path}/")
    assert "checkpoint.pt (a re-run resumes from it)" in str(raised.value)
    assert not (path / store.MANIFEST).exists() and not store.is_complete(path) and leftovers(path) == []
    # The kept checkpoint finishes the replica once there is room again.
    assert run_cell(spec, 1, tmp_path, "cpu-1t", progress=False).iloc[0]["weights_hash"] == store.weights_hash(
        result.weights
    )


# ----------------------------------------------------------------------------- locks
def test_a_lock_is_exclusive_between_descriptors_and_released_on_exit(tmp_path):
    d = tmp_path / "cell"
    with store.lock(d) as first:
        with store.lock(d) as second:  # another open file description: another holder, even in one process
            assert first and not second
        got = []
        waiter = threading.Thread(target=lambda: got.append(store.lock(d, wait=True).__enter__()))
        waiter.start()
        time.sleep(0.2)
        assert got == []  # still waiting
    waiter.join(5)
    assert got == [True]


def test_a_dead_holder_releases_its_lock(tmp_path):
    d = tmp_path / "cell"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from nnrandomness import store\nwith store.lock({str(d)!r}):\n print('held', flush=True)\n"
            " import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with store.lock(d) as held:
        assert not held
    holder.send_signal(signal.SIGKILL)
    holder.communicate()  # waits, and closes its pipe
    with store.lock(d) as held:
        assert held
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell"]  # the lock leaves no file behind


# ----------------------------------------------------------------------------- a kernel watches its runner
WATCHED = """
import sys, time
from nnrandomness import cell
print(cell.watch_runner(), flush=True)
time.sleep(60)
print("outlived its runner", flush=True)
"""


def test_a_job_exits_when_its_runner_dies(tmp_path):
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    env = {**os.environ, cell.RUNNER_PID_ENV: str(runner.pid)}
    job = subprocess.Popen([sys.executable, "-c", WATCHED], env=env, stdout=subprocess.PIPE, text=True)
    assert job.stdout.readline().strip() == "True"
    runner.kill()
    runner.wait()
    started = time.monotonic()
    out, _ = job.communicate(timeout=5)
    assert job.returncode == 1 and time.monotonic() - started < 2
    assert out == ""


def test_outside_a_runner_nothing_is_watched(monkeypatch):
    monkeypatch.delenv(cell.RUNNER_PID_ENV, raising=False)
    assert cell.watch_runner() is False
