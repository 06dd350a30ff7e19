"""Train one replica of a recipe under a noise setting.

`train_replica(spec)` is the only training loop of the project. Data sits on the device as
uint8; each epoch draws its order from the *order* stream and its augmentation from the *aug*
stream; the model is initialised from the *init* stream and drops out with the *dropout*
stream. Epoch-end checkpoints hold every generator's state, so a killed replica resumes
bit-identically.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import data as data_mod
from . import environment, models, noise, params

# ----------------------------------------------------------------------------- the recipe
_RECIPE = params.RECIPE_DEFAULTS  # the defaults of the fields that are notebook parameters: one definition


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything that defines one replica. Defaults: the paper's SmallCNN recipe on digits.

    The fields named like the training notebook's parameters mean what `params` says they mean,
    take their defaults from it and are judged by its rules (`validate_spec`).
    """

    dataset: str = "digits"  # a name in data.LOADERS
    model: str = "smallcnn"  # a name in models.MODELS
    setting: str = "CONTROL"  # a name in noise.SETTINGS
    replica: int = 0  # replica index k >= 0 (seeds of varied sources derive from it)
    epochs: int = _RECIPE["epochs"]
    batch_size: int = _RECIPE["batch_size"]
    lr: float = _RECIPE["lr"]  # paper: 4e-4
    lr_milestones: tuple[int, ...] = tuple(_RECIPE["lr_milestones"])  # epochs: lr *= lr_decay
    lr_decay: float = 0.1  # paper: 4e-4 for epochs 0-49, 4e-5 for 50-99, 4e-6 after
    adam_eps: float = 1e-7  # Keras' Adam epsilon, as in the paper's code
    weight_decay: float = 0.0  # L2 coefficient added to the loss as wd * ||w||^2 (Keras l2)
    dropout: float = _RECIPE["dropout"]  # the paper uses none
    augment: bool = _RECIPE["augment"]
    base_seed: int = _RECIPE["base_seed"]
    device: str = _RECIPE["device"]
    threads: int | None = _RECIPE["threads"]  # None leaves torch's thread count alone
    precision: str = _RECIPE["precision"]
    eval_batch_size: int = _RECIPE["eval_batch_size"]
    data_root: str | None = None  # real datasets' root (else $NNRANDOMNESS_DATA)
    fill_uninitialized_memory: bool | None = None  # None: torch's default with the flag
    cublas_workspace_config: str | None = None  # recorded factor; None leaves it unset

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    @classmethod
    def from_parameters(cls, values: Mapping, setting: str, replica: int = 0) -> "ReplicaSpec":
        """The spec of one replica of `setting` under the training notebook's parameters `values`.

        The one mapping from parameters to a spec: the notebook and the runner (`plan.Job.spec`) use it.
        """
        fields = {n: values[n] for n in _PARAMETER_FIELDS}
        fields.update(lr_milestones=tuple(values["lr_milestones"]), data_root=values["data_root"] or None)
        return cls(**fields, setting=setting, replica=replica)

    def parameters(self) -> dict:
        """The notebook parameters this spec's fields hold, written as the notebook writes them."""
        values = {n: getattr(self, n) for n in _PARAMETER_FIELDS}
        milestones = self.lr_milestones
        values.update(settings=[self.setting], data_root=self.data_root or "",
                      lr_milestones=list(milestones) if isinstance(milestones, (tuple, list)) else milestones)
        if self.threads is None:  # a spec may leave torch's thread count alone; a notebook may not
            del values["threads"]
        return values

    @property
    def noise(self) -> noise.NoiseSetting:
        return noise.get_setting(self.setting)

    def backend(self) -> noise.BackendConfig:
        return noise.BackendConfig(
            deterministic=self.noise.deterministic,
            threads=self.threads,
            precision=self.precision,
            fill_uninitialized_memory=self.fill_uninitialized_memory,
            cublas_workspace_config=self.cublas_workspace_config,
        )


# The notebook parameters that are fields of the spec under the same name.
_PARAMETER_FIELDS = [n for n in params.PARAMETERS if n in {f.name for f in dataclasses.fields(ReplicaSpec)}]


def validate_spec(spec: ReplicaSpec, check_data: bool = True) -> None:
    """Raise a clear ValueError (or FileNotFoundError for missing data) before any work.

    The fields that are notebook parameters are judged by the parameters' own rules (`params`), so
    that a value is refused by one rule wherever it enters; the spec's other fields here.
    """
    values = spec.parameters()
    errors = params.value_errors(values)
    if e := params.integer_error(spec.replica, 0):
        errors.append(f"replica {e}")
    if isinstance(spec.lr_decay, bool) or not isinstance(spec.lr_decay, (int, float)) or not spec.lr_decay > 0:
        errors.append(f"lr_decay must be a positive number, got {spec.lr_decay!r}")
    if isinstance(spec.weight_decay, bool) or not isinstance(spec.weight_decay, (int, float)) or spec.weight_decay < 0:
        errors.append(f"weight_decay must be >= 0, got {spec.weight_decay!r}")
    if not errors and (e := params.setting_error(spec.setting, values)):
        errors.append(e)
    if errors:
        raise ValueError("; ".join(errors))
    noise.validate_backend(spec.backend())  # the cuBLAS workspace setting
    if check_data:  # files on disk (skipped when the caller passes the loaded data)
        data_mod.check_dataset(spec.dataset, spec.data_root)


# ----------------------------------------------------------------------------- results
@dataclass
class ReplicaResult:
    """What one replica produced: history, final test predictions, final weights, provenance."""

    spec: ReplicaSpec
    seeds: dict[str, int]
    history: pd.DataFrame  # one row per epoch
    predictions: np.ndarray  # (N,) predicted class per test example
    probabilities: np.ndarray  # (N, C) float32 softmax
    labels: np.ndarray  # (N,) test labels
    groups: np.ndarray | None  # (N,) group attribute, or None
    weights: dict[str, torch.Tensor]  # final state_dict on the CPU (parameters and buffers)
    backend: dict  # requested and effective backend flags
    environment: dict
    perturbation: dict | None = None
    timings: dict = field(default_factory=dict)
    resumed_from_epoch: int | None = None


# ----------------------------------------------------------------------------- pieces
def lr_at(spec: ReplicaSpec, epoch: int) -> float:
    """Step schedule: lr * decay ** (number of milestones <= epoch)."""
    return spec.lr * spec.lr_decay ** sum(epoch >= m for m in spec.lr_milestones)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy via one-hot and log-softmax.

    Written out instead of F.cross_entropy because torch documents NLLLoss as lacking a
    deterministic CUDA implementation; elementwise ops and reductions have one.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    return -(F.one_hot(labels, logits.shape[1]).to(logp.dtype) * logp).sum(1).mean()


@torch.no_grad()
def evaluate(model, x_uint8, y, normalization, batch_size, precision, device):
    """Logits for a whole split in fixed-size batches (a sample's result depends on its batch)."""
    model.eval()
    outs = []
    for i in range(0, len(x_uint8), batch_size):
        with noise.autocast(device, precision):
            outs.append(model(data_mod.to_float(x_uint8[i : i + batch_size], normalization)).float())
    logits = torch.cat(outs)
    loss = float(cross_entropy(logits, y))
    return logits, loss


def make_optimizer(spec: ReplicaSpec, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam with the spec's lr and eps, fused where torch has a fused kernel (CPU, CUDA).

    Fused: one elementwise kernel per parameter instead of ~10 small ops each, 15 % faster per
    SmallCNN step on the CPU, and as deterministic (no reductions across threads). Every
    training loop of the project (train_replica, locate) builds its optimizer here, so their
    replicas stay bit-identical.
    """
    fused = torch.device(spec.device).type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=spec.lr, eps=spec.adam_eps, fused=fused or None)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _atomic_torch_save(obj, path: Path):
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the loop
def train_replica(
    spec: ReplicaSpec,
    dataset: data_mod.Dataset | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    progress: bool = False,
) -> ReplicaResult:
    """Train one replica and return its result.

    dataset: a preloaded `Dataset` (saves reloading it per replica); loaded from spec if None.
    checkpoint_dir: where epoch-end checkpoints go; an existing checkpoint for the same spec
        is resumed from. The checkpoint is left in place (the store removes it once the
        replica is written).
    progress: show a tqdm bar over epochs.
    """
    validate_spec(spec, check_data=dataset is None)
    setting = spec.noise
    seeds = noise.replica_seeds(spec.base_seed, spec.replica, setting)
    device = torch.device(spec.device)
    ckpt_path = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir is not None else None

    with noise.configure_determinism(spec.backend()) as backend:
        ds = (dataset or data_mod.load_dataset(spec.dataset, spec.data_root)).to(device)
        gens = noise.make_generators(seeds, device)
        model = models.build_model(
            spec.model, ds.num_classes, ds.in_channels, generator=gens["init"], dropout=spec.dropout
        )
        perturbation = noise.perturb_one_ulp(model, gens["perturb"]) if setting.perturb_ulp else None
        model.to(device)
        models.set_dropout_generator(model, gens["dropout"])
        opt = make_optimizer(spec, model)

        start_epoch, rows, resumed_from, train_seconds = 0, [], None, 0.0
        if ckpt_path is not None and ckpt_path.exists():
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            if ckpt["spec"] != spec.to_dict():
                raise ValueError(f"checkpoint {ckpt_path} belongs to another spec; delete it to start over")
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            for name, state in ckpt["generators"].items():
                gens[name].set_state(state)
            start_epoch, rows, resumed_from = ckpt["epoch"], ckpt["history"], ckpt["epoch"]
            train_seconds = ckpt["train_seconds"]

        n = len(ds.y_train)
        epochs = range(start_epoch, spec.epochs)
        if progress:
            # Text bars: tqdm.auto in a kernel without ipywidgets prints a TqdmWarning holding the
            # venv's absolute path into every executed notebook.
            from tqdm import tqdm

            epochs = tqdm(epochs, desc=f"{spec.setting} replica {spec.replica}", initial=start_epoch, total=spec.epochs)
        for epoch in epochs:
            for group in opt.param_groups:
                group["lr"] = lr_at(spec, epoch)
            model.train()
            _sync(device)
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=gens["order"], device=gens["order"].device).to(device)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            for i in range(0, n, spec.batch_size):
                idx = order[i : i + spec.batch_size]
                xb, yb = ds.x_train[idx], ds.y_train[idx]
                if spec.augment:
                    xb = data_mod.augment(xb, ds.augment_pad, ds.augment_flip, gens["aug"])
                with noise.autocast(device, spec.precision):
                    logits = model(data_mod.to_float(xb, ds.normalization))
                loss = cross_entropy(logits, yb)
                if spec.weight_decay:
                    loss = loss + spec.weight_decay * sum((p.float() ** 2).sum() for p in model.parameters() if p.ndim > 1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                # Accumulate on the device: a .item() per step would synchronise every step.
                loss_sum += loss.detach() * len(idx)
                correct += (logits.detach().argmax(1) == yb).sum()
            _sync(device)
            epoch_seconds = time.perf_counter() - t0
            train_seconds += epoch_seconds
            test_logits, test_loss = evaluate(
                model, ds.x_test, ds.y_test, ds.normalization, spec.eval_batch_size, spec.precision, device
            )
            rows.append(
                {
                    "epoch": epoch + 1,
                    "lr": lr_at(spec, epoch),
                    "train_loss": float(loss_sum) / n,
                    "train_accuracy": int(correct) / n,
                    "test_loss": test_loss,
                    "test_accuracy": float((test_logits.argmax(1) == ds.y_test).float().mean()),
                    "seconds": epoch_seconds,
                }
            )
            if ckpt_path is not None:
                ckpt_path.parent.mkdir(parents=True, exist_ok=True)
                _atomic_torch_save(
                    {
                        "spec": spec.to_dict(),
                        "epoch": epoch + 1,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "generators": {k: g.get_state() for k, g in gens.items()},
                        "history": rows,
                        "train_seconds": train_seconds,
                    },
                    ckpt_path,
                )

        t0 = time.perf_counter()
        logits, _ = evaluate(model, ds.x_test, ds.y_test, ds.normalization, spec.eval_batch_size, spec.precision, device)
        probabilities = torch.softmax(logits, 1)
        eval_seconds = time.perf_counter() - t0
        env = environment.fingerprint(device)

    return ReplicaResult(
        spec=spec,
        seeds=seeds,
        history=pd.DataFrame(rows),
        predictions=logits.argmax(1).cpu().numpy(),
        probabilities=probabilities.cpu().numpy().astype(np.float32),
        labels=ds.y_test.cpu().numpy(),
        groups=None if ds.g_test is None else ds.g_test.cpu().numpy(),
        weights={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        backend=backend,
        environment=env,
        perturbation=perturbation,
        timings={
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "examples_per_second": n * spec.epochs / train_seconds if train_seconds else None,
        },
        resumed_from_epoch=resumed_from,
    )


# ----------------------------------------------------------------------------- one cell
def run_cell(
    base: ReplicaSpec,
    replicas: int | list[int],
    root: str | Path,
    hardware: str,
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> "pd.DataFrame":
    """Train and store the replicas of one cell (hardware x dataset x model x setting).

    Replicas already complete in the store are skipped (resume), interrupted ones resume from
    their checkpoint. When the setting promises bit-identical replicas (CONTROL), their hashes
    are compared at the end and a difference raises `store.DeterminismViolation`.
    Returns the store's per-replica rows for the cell.
    """
    from . import store

    indices = list(range(replicas)) if isinstance(replicas, int) else list(replicas)
    if not indices:
        raise ValueError("replicas must be a positive count or a non-empty list of indices")
    for k in indices:  # validate everything before any work
        validate_spec(dataclasses.replace(base, replica=k), check_data=(k == indices[0]))
    dataset = None
    for k in indices:
        spec = dataclasses.replace(base, replica=k)
        path = store.replica_dir(root, hardware, spec.dataset, spec.model, spec.setting, k)
        if store.is_complete(path) and not overwrite:
            continue
        if overwrite:
            store.remove_replica(path)
        dataset = dataset or data_mod.load_dataset(spec.dataset, spec.data_root)
        result = train_replica(spec, dataset, checkpoint_dir=path, progress=progress)
        store.write_replica(root, hardware, result)
    runs = store.load_runs(root, hardware=hardware, dataset=base.dataset, model=base.model, setting=base.setting)
    cell = runs.replicas[runs.replicas["replica"].isin(indices)]
    if base.noise.expects_identical:
        problems = store.check_identical(cell)
        if problems:
            raise store.DeterminismViolation(
                f"{base.setting} replicas of {hardware}/{base.dataset}/{base.model} are not bit-identical: "
                + "; ".join(problems)
            )
    return cell
