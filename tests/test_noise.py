"""Noise settings, per-source seeds, backend flags and the one-ULP perturbation."""

import hashlib
import os
import subprocess
import sys

import pytest
import torch

from nnrandomness import noise
from nnrandomness.models import build_model


def test_paper_settings_match_the_design_table():
    s = noise.SETTINGS
    assert s["ALGO+IMPL"].varied == set(noise.SOURCES) and not s["ALGO+IMPL"].deterministic
    assert s["ALGO"].varied == set(noise.SOURCES) and s["ALGO"].deterministic
    assert s["IMPL"].varied == set() and not s["IMPL"].deterministic
    assert s["CONTROL"].varied == set() and s["CONTROL"].deterministic
    assert [n for n in s.values() if n.expects_identical] == [s["CONTROL"]]
    for name, source in [("INIT", "init"), ("ORDER", "order"), ("AUG", "aug"), ("DROPOUT", "dropout")]:
        assert s[name].varied == {source} and s[name].deterministic
    assert s["ULP"].perturb_ulp and not s["ULP"].varied


def test_unknown_setting_lists_valid_names():
    with pytest.raises(ValueError, match=r"'ALGO_IMPL'.*ALGO\+IMPL, ALGO, IMPL, CONTROL"):
        noise.get_setting("ALGO_IMPL")


def test_seeds_vary_only_for_varied_sources():
    for name, setting in noise.SETTINGS.items():
        a = noise.replica_seeds(7, 0, setting)
        b = noise.replica_seeds(7, 3, setting)
        for stream in noise.SOURCES:
            assert (a[stream] != b[stream]) == (stream in setting.varied), (name, stream)
        assert (a["perturb"] != b["perturb"]) == setting.perturb_ulp
    # Streams of one replica are distinct, and the base seed matters.
    seeds = noise.replica_seeds(7, 1, noise.SETTINGS["ALGO"])
    assert len(set(seeds.values())) == len(seeds)
    assert noise.replica_seeds(8, 1, noise.SETTINGS["ALGO"]) != seeds


def test_seed_is_the_documented_hash():
    # SHA-256 of "base/replica/stream", first 8 bytes little-endian, shifted to 63 bits.
    expected = int.from_bytes(hashlib.sha256(b"5/2/order").digest()[:8], "little") >> 1
    assert noise.stream_seed(5, 2, "order", noise.SETTINGS["ORDER"]) == expected
    # A fixed source uses replica 0 whatever the replica.
    expected0 = int.from_bytes(hashlib.sha256(b"5/0/order").digest()[:8], "little") >> 1
    assert noise.stream_seed(5, 2, "order", noise.SETTINGS["INIT"]) == expected0
    with pytest.raises(ValueError, match="unknown random stream 'noise'"):
        noise.stream_seed(5, 2, "noise", noise.SETTINGS["ALGO"])


def test_configure_determinism_sets_records_and_restores():
    before = noise._read_flags()
    cfg = noise.BackendConfig(
        deterministic=True, threads=1, fill_uninitialized_memory=False, cublas_workspace_config=":4096:8"
    )
    with noise.configure_determinism(cfg) as record:
        eff = record["effective"]
        assert torch.are_deterministic_algorithms_enabled() and eff["deterministic_algorithms"]
        assert eff["cudnn_deterministic"] and not eff["cudnn_benchmark"]
        # use_deterministic_algorithms turns the fill on; the config asked for it off.
        assert eff["fill_uninitialized_memory"] is False
        assert torch.get_num_threads() == 1 and eff["num_threads"] == 1
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert eff["cuda_matmul_fp32_precision"] == "ieee"
        assert record["requested"]["cudnn_benchmark"] is False
    assert noise._read_flags() == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ or before["CUBLAS_WORKSPACE_CONFIG"]


def test_nondeterministic_mode_turns_benchmark_on_and_tf32_sets_new_api():
    with noise.configure_determinism(noise.BackendConfig(deterministic=False, precision="tf32")) as record:
        eff = record["effective"]
        assert not eff["deterministic_algorithms"] and eff["cudnn_benchmark"]
        assert eff["cuda_matmul_fp32_precision"] == "tf32" and eff["cudnn_conv_fp32_precision"] == "tf32"
    matmul = noise._read_flags()["cuda_matmul_fp32_precision"]
    assert torch.backends.cuda.matmul.fp32_precision != "tf32" or matmul == "tf32"


def test_flags_restored_after_an_exception():
    before = noise._read_flags()
    with pytest.raises(KeyError):
        with noise.configure_determinism(noise.BackendConfig(deterministic=True, threads=1)):
            raise KeyError("boom")
    assert noise._read_flags() == before


@pytest.mark.parametrize(
    "cfg, message",
    [
        (dict(precision="fp16"), r"unknown precision 'fp16'; valid precisions: fp32, tf32, bf16"),
        (dict(cublas_workspace_config=":8:8"), r"unknown CUBLAS_WORKSPACE_CONFIG ':8:8'"),
    ],
)
def test_bad_backend_config_is_refused_before_touching_flags(cfg, message):
    before = noise._read_flags()
    with pytest.raises(ValueError, match=message):
        with noise.configure_determinism(noise.BackendConfig(deterministic=True, **cfg)):
            pass
    assert noise._read_flags() == before


def test_a_bad_thread_count_is_refused_by_torch_and_flags_restored():
    """Threads are judged where they enter (params); torch refuses the rest, and nothing stays set."""
    before = noise._read_flags()
    with pytest.raises(RuntimeError, match="set_num_threads expects a positive integer"):
        with noise.configure_determinism(noise.BackendConfig(deterministic=True, threads=0)):
            pass
    assert noise._read_flags() == before


def test_perturb_moves_exactly_one_weight_by_one_ulp():
    make = lambda: build_model("smallcnn", 10, 1, generator=torch.Generator().manual_seed(0))  # noqa: E731
    a, b = make(), make()
    info = noise.perturb_one_ulp(b, torch.Generator().manual_seed(3))
    diffs = {n: (pa != pb).sum().item() for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters())}
    assert sum(diffs.values()) == 1 and diffs[info["parameter"]] == 1
    old = dict(a.named_parameters())[info["parameter"]].detach().view(-1)[info["index"]]
    new = dict(b.named_parameters())[info["parameter"]].detach().view(-1)[info["index"]]
    assert new == torch.nextafter(old, torch.tensor(float("inf")))
    assert new > old and (new - old) < 1e-6 * max(abs(float(old)), 1e-30) + 1e-37
    # Same generator seed, same weight.
    c = make()
    assert noise.perturb_one_ulp(c, torch.Generator().manual_seed(3)) == info


def test_import_has_no_side_effects_on_backend_flags():
    code = (
        "import torch, json; from nnrandomness import noise; before = noise._read_flags(); "
        "import nnrandomness, nnrandomness.train, nnrandomness.store, nnrandomness.data, nnrandomness.models; "
        "after = noise._read_flags(); print(json.dumps(before == after))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "true"


@pytest.mark.requires_gpu
def test_cublas_workspace_refused_once_cuda_runs(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.zeros(1, device="cuda")  # initialises CUDA
    with pytest.raises(RuntimeError, match="must be set before CUDA initialises"):
        with noise.configure_determinism(noise.BackendConfig(deterministic=True, cublas_workspace_config=":16:8")):
            pass
