"""Committed replicas re-trained from their manifests give the committed bits (on their machine kind).

A sample of the committed run store (`data/runs`, written by `plans/default.yaml`) is re-trained in a
fresh process per replica, with the job's environment (`batch.job_environment`: thread variables and
ATen's CPU capability, set before torch loads), and its weights and predictions hashes are compared
with the manifest's. CPU float results depend on the CPU model, the instruction set and torch's version
(`environment.float_machine`): on the kind that recorded the store the hashes must be equal; on another
kind the replica must still train, and the test says that the comparison was not made (a warning in the
summary), as conftest.py does for the chapters' live cells.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from nnrandomness import environment, store

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "data" / "runs"

# One replica per kind of job: the main cell's ALGO (with the extra test sets), the one-ULP poke, the
# BatchNorm and MLP cells, the subgroup data, and a tooling configuration that needs ATen's avx2 kernels.
SAMPLE = [
    "cpu-1t/mnist1d/cnn1d/ALGO/replica-0",
    "cpu-1t/mnist1d/cnn1d/ULP/replica-7",
    "cpu-1t/mnist1d/cnn1d_bn/ALGO/replica-3",
    "cpu-1t/mnist1d/mlp1d/ALGO/replica-2",
    "cpu-1t/mnist1d_groups/cnn1d/ALGO/replica-1",
    "cpu-1t-avx2/mnist1d/cnn1d/ALGO/replica-4",
]

# Re-trains one replica from its manifest's spec and prints its hashes and the machine kind, as JSON.
RETRAIN = """
import json, sys
from nnrandomness import environment, store
from nnrandomness.train import ReplicaSpec, train_replica

fields = json.loads(sys.argv[1])
fields.update(lr_milestones=tuple(fields["lr_milestones"]), snapshot_epochs=tuple(fields["snapshot_epochs"]))
# The extra test sets are evaluated after training and change no bit of it (tests/test_train.py); a fresh
# clone would first generate them (~80 s).
r = train_replica(ReplicaSpec(**{**fields, "extra_tests": False}))
print(json.dumps({"weights_hash": store.weights_hash(r.weights),
                  "predictions_hash": store.predictions_hash(r.predictions, r.probabilities),
                  "machine": environment.float_machine()}))
"""


def recorded_machine(env: dict) -> str:
    """`environment.float_machine()` of the process that wrote a manifest, from its fingerprint."""
    return f"{env['cpu_model']} | {env['cpu_capability']} | torch {env['torch']}"


@pytest.mark.parametrize("replica", SAMPLE)
def test_committed_replica_retrains_to_its_bits(replica):
    manifest = json.loads((RUNS / replica / "manifest.json").read_text())
    env = {k: v for k, v in os.environ.items() if k not in manifest["environment"]["env"]}
    env.update({k: v for k, v in manifest["environment"]["env"].items() if v is not None})
    out = subprocess.run(
        [sys.executable, "-c", RETRAIN, json.dumps(manifest["spec"])],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    recorded = recorded_machine(manifest["environment"])
    if got["machine"] != recorded:
        warnings.warn(
            f"{replica}: recorded on {recorded!r}, re-trained on {got['machine']!r}: bits not compared", stacklevel=1
        )
        return
    assert (got["weights_hash"], got["predictions_hash"]) == (
        manifest["weights_hash"],
        manifest["predictions_hash"],
    ), f"{replica} re-trained to other bits on the machine kind that recorded it"


def test_sample_covers_the_committed_store():
    # The sample must exist in the store (a renamed cell would silently shrink it) and come from one
    # clean commit: a '+dirty' store cannot be re-made from its commit.
    commits = set()
    for replica in SAMPLE:
        manifest = json.loads((RUNS / replica / "manifest.json").read_text())
        assert store.is_complete(RUNS / replica), replica
        commits.add(manifest["environment"]["git_commit"])
    assert len(commits) == 1 and not commits.pop().endswith("+dirty")


def test_recorded_machine_matches_float_machine_here():
    # The label read from a manifest is the one float_machine() writes: otherwise every comparison above
    # would be skipped without anyone noticing.
    here = environment.fingerprint("cpu")
    assert recorded_machine(here) == environment.float_machine()
