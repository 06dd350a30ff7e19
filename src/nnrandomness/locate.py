"""When and where two replicas that should agree first diverge.

Two replicas A and B of one recipe (a `ReplicaSpec`) are trained in lockstep, one step of A
then the same step of B, with the same seeds and therefore the same data order, augmentation
and initial weights. They differ in one *factor* (see `FACTORS`): nothing (a control),
non-deterministic kernels, the CPU thread count, or one initial weight moved by one ULP.
`locate_divergence` reports

(a) the first step at which anything differs bitwise;
(b) the first aten op of that step whose output bits differ, with the module it ran in and
    the phase of the step (e.g. ``aten.index_put_.default in scatter (forward)``);
(c) how far apart the replicas drift per epoch (L2 distance of the weights, fraction of test
    predictions that differ);
(d) which classes (and label x group subgroups) have flipped predictions at the end.

Step indexing: step 0 is the initial state (weights after initialisation and any ULP poke,
before training); step s >= 1 is the s-th optimizer step counted across epochs, and "differs
at step s" means that the loss, gradients or weights computed within step s differ while
everything up to step s - 1 was bit-identical. Epoch e (>= 1) ends after step
e * steps_per_epoch; epoch 0 in the history is the initial state.

Ops are seen by a `TorchDispatchMode` that hashes every output of every aten op (forward,
loss, backward through autograd, optimizer) in call order; the two replicas' traces of a step
are compared op by op. The op trace runs until the first divergent step has been traced, then
stops (it costs time); bitwise state comparisons continue until the weights differ too.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from . import data as data_mod
from . import environment, metrics, models, noise, train

# ----------------------------------------------------------------------------- factors
FACTORS: dict[str, str] = {
    "none": "identical replicas, deterministic kernels (a control: must never diverge)",
    # On the CPU few kernels are non-deterministic (index_put_(accumulate=True) and the backward of
    # advanced indexing, at >= 2 threads): most CPU models never diverge under "impl".
    "impl": "identical replicas, non-deterministic kernels allowed (torch's deterministic flag off)",
    "threads": "replica B runs at threads_b intra-op threads instead of the spec's threads",
    "ulp": "replica B's initial weights have one weight moved by one ULP",
}
# The setting each factor gives replicas A and B: it decides the kernel mode and the ULP poke.
# Every algorithmic source is fixed in all of them, so both replicas draw identical seeds.
_SETTINGS = {
    "none": ("CONTROL", "CONTROL"),
    "impl": ("IMPL", "IMPL"),
    "threads": ("CONTROL", "CONTROL"),
    "ulp": ("CONTROL", "ULP"),
}

# Ops that return uninitialised memory (unless torch fills it): their bits carry no meaning,
# so their outputs are not compared.
_UNINITIALIZED_OPS = frozenset(
    {"empty", "empty_like", "empty_strided", "empty_permuted", "new_empty", "new_empty_strided"}
)


# ----------------------------------------------------------------------------- the op trace
def _digest(value) -> str:
    """An exact fingerprint of an op's outputs: BLAKE2b over dtype, shape and raw bytes of tensors,
    the value of plain Python outputs (e.g. `.item()`)."""
    h = hashlib.blake2b(digest_size=12)
    for leaf in pytree.tree_leaves(value):
        if isinstance(leaf, torch.Tensor):
            t = leaf.detach()
            h.update(f"{t.dtype}{tuple(t.shape)}|".encode())
            if t.numel():
                h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        elif isinstance(leaf, (bool, int, float, complex, str, type(None), torch.dtype, torch.device)):
            h.update(repr(leaf).encode())
        else:  # opaque objects (e.g. the profiler's handles) print their address: compare the type only
            h.update(type(leaf).__qualname__.encode())
    return h.hexdigest()


def _shapes(value) -> str:
    return ", ".join(str(tuple(t.shape)) for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor))


class _Where:
    """Tracks where traced code runs: the phase of the step and the current module path.

    Forward: a stack of module names kept by forward pre-hooks and hooks. Backward: autograd
    gives no module boundaries, so each module's output tensor gets a gradient hook; it fires
    just before autograd runs that module's backward, and the ops that follow are attributed to
    it (ops of non-module code between two modules, such as a residual add, go to the module
    whose output gradient came last). Tensor hooks are used instead of full backward hooks
    because those wrap outputs in an extra autograd function (extra ops in the trace) and
    refuse in-place ops such as torchvision's ReLU(inplace=True).
    """

    def __init__(self, model: torch.nn.Module):
        self.phase = ""
        self._stack: list[str] = []
        self._backward_module = ""
        self._handles = []
        root = type(model).__name__
        for name, module in model.named_modules():
            label = name or root
            self._handles.append(module.register_forward_pre_hook(partial(self._enter, label)))
            self._handles.append(module.register_forward_hook(partial(self._exit, label)))

    @property
    def module(self) -> str:
        if self.phase == "backward":
            return self._backward_module
        return self._stack[-1] if self._stack else ""

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self._backward_module = ""

    def _enter(self, label, module, args):
        self._stack.append(label)

    def _exit(self, label, module, args, output):
        self._stack.pop()
        for t in pytree.tree_leaves(output):
            # Inner modules' hooks run first: the innermost module that produced a tensor names it.
            if isinstance(t, torch.Tensor) and t.requires_grad and not hasattr(t, "_locate_module"):
                t._locate_module = label
                t.register_hook(partial(self._gradient_ready, label))

    def _gradient_ready(self, label, grad):
        self._backward_module = label

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class _OpTrace(TorchDispatchMode):
    """Records (op, phase, module, output digest, output shapes) for every aten op, in call order."""

    def __init__(self, where: _Where):
        super().__init__()
        self.where = where
        self.records: list[tuple[str, str, str, str | None, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # The mode is switched off inside this method, so hashing runs untraced.
        digest = None if func.overloadpacket.__name__ in _UNINITIALIZED_OPS else _digest(out)
        self.records.append((str(func), self.where.phase, self.where.module, digest, _shapes(out)))
        return out


def compare_traces(a: list[tuple], b: list[tuple]) -> tuple[int | None, int]:
    """(index of the first record whose op or output digest differs, number of differing records).

    Records beyond the shorter trace count as differing; (None, 0) means the traces agree.
    """
    first, count = None, abs(len(a) - len(b))
    for i, (ra, rb) in enumerate(zip(a, b)):
        if ra[0] != rb[0] or ra[3] != rb[3]:
            count += 1
            first = i if first is None else first
    if first is None and len(a) != len(b):
        first = min(len(a), len(b))
    return first, count


# ----------------------------------------------------------------------------- bitwise state
def bits_equal(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """True iff a and b have the same dtype, shape and bytes (so NaN == NaN and 0.0 != -0.0)."""
    if a is None or b is None:
        return a is b
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    as_bytes = lambda t: t.detach().contiguous().reshape(-1).view(torch.uint8)  # noqa: E731
    return bool(torch.equal(as_bytes(a), as_bytes(b)))


def _differing(a: dict[str, torch.Tensor | None], b: dict[str, torch.Tensor | None]) -> list[str]:
    return [k for k in a if not bits_equal(a[k], b[k])]


# ----------------------------------------------------------------------------- one replica
class _Replica:
    """One of the two lockstep replicas: a `train.Replica` under its own backend flags, stepped by
    `train.start_epoch` and `train.train_step` (the trainer's own step, watched, never copied)."""

    def __init__(self, label, spec, ds, model_factory):
        self.label, self.spec, self.backend = label, spec, spec.backend()
        with noise.configure_determinism(self.backend) as self.record:
            self.pieces = train.build_replica(spec, ds, model_factory=model_factory)
        self.model = self.pieces.model
        self.order = None
        self.loss = None

    def state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def gradients(self) -> dict[str, torch.Tensor | None]:
        return {n: p.grad for n, p in self.model.named_parameters()}

    def train_step(self, ds, epoch: int, batch: int, where: _Where | None) -> None:
        """Step `batch` of `epoch` (both 0-based), as train.train_replica runs it.

        Call inside `noise.configure_determinism(self.backend)`. `where` (when tracing) is told
        the phase. train_replica's per-epoch loss/accuracy bookkeeping is left out: it changes no state.
        """
        phase = where.set_phase if where else (lambda name: None)
        phase("data")  # the epoch's order (drawn with its first batch) and the batch's slice of it
        if batch == 0:
            self.order = train.start_epoch(self.pieces, ds, epoch)
        idx = self.order[batch * self.spec.batch_size : (batch + 1) * self.spec.batch_size]
        self.loss = train.train_step(self.pieces, ds, idx, phase).loss

    def predict(self, ds) -> np.ndarray:
        with noise.configure_determinism(self.backend):
            logits, _ = train.evaluate(
                self.model,
                ds.x_test,
                ds.y_test,
                ds.normalization,
                self.spec.eval_batch_size,
                self.spec.precision,
                self.pieces.device,
            )
        return logits.argmax(1).cpu().numpy()


# ----------------------------------------------------------------------------- the report
@dataclass
class DivergenceReport:
    """What `locate_divergence` found. Steps are indexed as in the module docstring."""

    factor: str
    model: str  # spec.model, or the model factory's name when one was given
    spec: dict  # replica A's spec (B differs only by the factor)
    replicas: dict  # per replica: setting, threads, backend record, perturbation
    steps_per_epoch: int
    steps_run: int
    first_step: int | None  # first step at which anything differs; None: no divergence
    first_step_parts: dict  # at first_step: {"loss", "gradients", "weights"} -> differs?
    first_weight_step: int | None  # first step after which the weights differ
    first_op: dict | None  # first divergent op of first_step (None at step 0 or without a trace)
    differing_ops: int | None  # ops of first_step whose outputs differ
    traced_ops: int | None  # ops traced in first_step (per replica)
    initial_difference: list[str]  # at step 0: the state entries that differ
    history: pd.DataFrame  # per epoch: distance between the replicas
    flips: pd.DataFrame  # per class at the end: test examples whose predictions differ
    subgroups: pd.DataFrame | None  # per (label, group) at the end, when the dataset has groups
    weights: tuple[dict, dict] = field(repr=False, default=())  # final state_dicts of A and B (CPU)
    environment: dict = field(repr=False, default_factory=dict)

    @property
    def diverged(self) -> bool:
        return self.first_step is not None

    def describe_first_op(self) -> str | None:
        op = self.first_op
        if op is None:
            return None
        if op["op_a"] != op["op_b"]:
            return f"op sequence differs at op {op['index']}: A ran {op['op_a']}, B ran {op['op_b']}"
        return f"{op['op_a']} in {op['module'] or '(no module)'} ({op['phase']})"

    def to_frame(self) -> pd.DataFrame:
        """The per-epoch history with the run's identity and findings on every row (tidy)."""
        ident = {
            "factor": self.factor,
            "dataset": self.spec["dataset"],
            "model": self.model,
            "device": self.spec["device"],
            "precision": self.spec["precision"],
            "threads_a": self.replicas["A"]["threads"],
            "threads_b": self.replicas["B"]["threads"],
            "first_step": self.first_step,
            "first_weight_step": self.first_weight_step,
            "first_op": self.describe_first_op(),
        }
        return self.history.assign(**ident)[list(ident) + list(self.history.columns)]

    def summary(self) -> str:
        a, b = self.replicas["A"], self.replicas["B"]
        lines = [
            f"factor {self.factor!r}: {FACTORS[self.factor]}",
            f"{self.model} on {self.spec['dataset']}, {self.spec['device']}, {self.spec['precision']}; "
            f"A: {a['setting']} at {a['threads']} thread(s), B: {b['setting']} at {b['threads']} thread(s); "
            f"{self.steps_run} steps ({self.steps_per_epoch} per epoch)",
        ]
        if not self.diverged:
            lines.append(f"no divergence: the replicas stayed bit-identical for all {self.steps_run} steps")
            return "\n".join(lines)
        if self.first_step == 0:
            lines.append(f"diverged at step 0: the initial states differ in {', '.join(self.initial_difference)}")
        else:
            parts = ", ".join(k for k, v in self.first_step_parts.items() if v) or "only intermediate values"
            epoch = math.ceil(self.first_step / self.steps_per_epoch)
            lines.append(f"diverged at step {self.first_step} (epoch {epoch}): differs in {parts}")
        if self.first_op is not None:
            lines.append(
                f"first divergent op: {self.describe_first_op()} "
                f"[op {self.first_op['index']} of {self.traced_ops}; {self.differing_ops} ops differ]"
            )
        lines.append(f"weights first differ after step {self.first_weight_step}")
        last = self.history.iloc[-1]
        lines.append(
            f"after epoch {int(last['epoch'])}: weight L2 {last['weight_l2']:.3g}, "
            f"{int(last['n_disagree'])} of {int(self.flips['n_test'].sum())} test predictions differ "
            f"({last['disagreement']:.2%})"
        )
        flipped = self.flips[self.flips["n_flipped"] > 0]
        if len(flipped):
            lines.append(
                "flipped per class: "
                + ", ".join(f"{r.class_name}: {r.n_flipped}/{r.n_test}" for r in flipped.itertuples())
            )
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the search
def _replica_specs(base: train.ReplicaSpec, factor: str, threads_b: int) -> tuple[train.ReplicaSpec, train.ReplicaSpec]:
    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}; valid factors: {', '.join(FACTORS)}")
    setting_a, setting_b = _SETTINGS[factor]
    spec_a = dataclasses.replace(base, setting=setting_a)
    spec_b = dataclasses.replace(base, setting=setting_b)
    if factor == "threads":
        if base.threads is None or isinstance(threads_b, bool) or not isinstance(threads_b, int) or threads_b < 1:
            raise ValueError(
                f"factor 'threads' needs an integer spec.threads and threads_b >= 1, "
                f"got {base.threads!r} and {threads_b!r}"
            )
        if threads_b == base.threads:
            raise ValueError(f"factor 'threads' needs threads_b different from spec.threads, both are {threads_b}")
        spec_b = dataclasses.replace(spec_b, threads=threads_b)
    return spec_a, spec_b


def locate_divergence(
    spec: train.ReplicaSpec,
    factor: str,
    *,
    threads_b: int = 2,
    dataset: data_mod.Dataset | None = None,
    model_factory: models.ModelFactory | None = None,
    trace: bool = True,
    progress: bool = False,
) -> DivergenceReport:
    """Train two replicas of `spec` in lockstep that differ only by `factor`; report where they diverge.

    spec: the recipe (dataset, model, epochs, batch size, lr, threads, precision, device, ...).
        Its `setting` is replaced: both replicas fix every algorithmic source; factor "impl"
        runs both with non-deterministic kernels (IMPL), the others with deterministic ones
        (CONTROL), and under "ulp" replica B is the ULP setting's replica (one weight poked).
    factor: a name in `FACTORS`.
    threads_b: replica B's thread count under factor "threads" (A uses spec.threads).
    dataset: a preloaded `Dataset` (else loaded from spec).
    model_factory: builds the model from (num_classes, in_channels, init generator) instead of
        `models.build_model(spec.model, ...)` (tests use it for toy models); the report names
        the model after the factory's `__name__`.
    trace: record aten ops to find the first divergent op (slower until the first divergence).
    progress: a tqdm bar over epochs.
    """
    spec_a, spec_b = _replica_specs(spec, factor, threads_b)
    for s in (spec_a, spec_b):
        train.validate_spec(s, check_data=dataset is None)
    device = torch.device(spec.device)
    ds = (dataset or data_mod.load_dataset(spec.dataset, spec.data_root, **spec.dataset_options())).to(device)
    pair = [_Replica(label, s, ds, model_factory) for label, s in (("A", spec_a), ("B", spec_b))]
    a, b = pair
    steps_per_epoch = math.ceil(len(ds.y_train) / spec.batch_size)

    first_step = first_weight_step = first_op = differing = traced = None
    parts: dict = {}
    initial = _differing(a.state(), b.state())
    if initial:
        first_step = first_weight_step = 0
        parts = {"loss": False, "gradients": False, "weights": True}

    row, final_predictions = _distance_row(0, 0, a, b, ds)
    rows = [row]
    epochs = range(1, spec.epochs + 1)
    if progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc=f"locate {factor}")
    step = 0
    for epoch in epochs:
        for batch in range(steps_per_epoch):
            step += 1
            traces = [_step(r, ds, epoch - 1, batch, trace=trace and first_step is None) for r in pair]
            if first_weight_step is not None:
                continue  # everything is found; train on for the per-epoch distances
            weights_differ = bool(_differing(a.state(), b.state()))
            if first_step is None:
                step_parts = {
                    "loss": not bits_equal(a.loss, b.loss),
                    "gradients": bool(_differing(a.gradients(), b.gradients())),
                    "weights": weights_differ,
                }
                index, count = compare_traces(*traces) if traces[0] is not None else (None, 0)
                if index is not None or any(step_parts.values()):
                    first_step, parts = step, step_parts
                    if index is not None:
                        differing, traced = count, len(traces[0])
                        first_op = _op_record(index, *traces)
            if weights_differ:
                first_weight_step = step
        row, final_predictions = _distance_row(epoch, step, a, b, ds)
        rows.append(row)

    flips, subgroups = _flip_tables(*final_predictions, ds)
    return DivergenceReport(
        factor=factor,
        model=spec.model if model_factory is None else getattr(model_factory, "__name__", "custom"),
        spec=spec_a.to_dict(),
        replicas={
            r.label: {
                "setting": r.spec.setting,
                "threads": r.spec.threads,
                "seeds": r.pieces.seeds,
                "backend": r.record,
                "perturbation": r.pieces.perturbation,
            }
            for r in pair
        },
        steps_per_epoch=steps_per_epoch,
        steps_run=step,
        first_step=first_step,
        first_step_parts=parts,
        first_weight_step=first_weight_step,
        first_op=first_op,
        differing_ops=differing,
        traced_ops=traced,
        initial_difference=initial,
        history=pd.DataFrame(rows),
        flips=flips,
        subgroups=subgroups,
        weights=tuple({k: v.detach().cpu().clone() for k, v in r.state().items()} for r in pair),
        environment=environment.fingerprint(device),
    )


def _step(r: _Replica, ds, epoch: int, batch: int, trace: bool) -> list[tuple] | None:
    """One training step of replica r under its backend flags; its op trace when `trace`."""
    with noise.configure_determinism(r.backend):
        if not trace:
            r.train_step(ds, epoch, batch, None)
            return None
        where = _Where(r.model)
        try:
            with _OpTrace(where) as t:
                r.train_step(ds, epoch, batch, where)
        finally:
            where.remove()
        return t.records


def _op_record(index: int, a: list[tuple], b: list[tuple]) -> dict:
    ra = a[index] if index < len(a) else ("(trace ended)", "", "", None, "")
    rb = b[index] if index < len(b) else ("(trace ended)", "", "", None, "")
    return {"index": index, "op_a": ra[0], "op_b": rb[0], "phase": ra[1], "module": ra[2], "shapes": ra[4]}


def _distance_row(epoch: int, step: int, a: _Replica, b: _Replica, ds) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """One history row (how far apart A and B are now) and both replicas' test predictions."""
    wa = {k: v.detach().cpu().numpy() for k, v in a.state().items()}
    wb = {k: v.detach().cpu().numpy() for k, v in b.state().items()}
    pa, pb = a.predict(ds), b.predict(ds)
    y = ds.y_test.cpu().numpy()
    row = {
        "epoch": epoch,
        "step": step,
        "weight_l2": float(metrics.pairwise_l2([wa, wb])[0, 1]),  # parameters only, as the study's L2
        "n_disagree": int((pa != pb).sum()),
        "disagreement": metrics.churn(np.stack([pa, pb])),
        "accuracy_a": float((pa == y).mean()),
        "accuracy_b": float((pb == y).mean()),
    }
    return row, (pa, pb)


def _flip_tables(pa: np.ndarray, pb: np.ndarray, ds) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    y = ds.y_test.cpu().numpy()
    frame = pd.DataFrame({"label": y, "flipped": pa != pb, "correct_a": pa == y, "correct_b": pb == y})
    flips = (
        frame.groupby("label")
        .agg(
            n_test=("flipped", "size"),
            n_flipped=("flipped", "sum"),
            accuracy_a=("correct_a", "mean"),
            accuracy_b=("correct_b", "mean"),
        )
        .reindex(range(ds.num_classes), fill_value=0)
        .rename_axis("label")
        .reset_index()
    )
    flips.insert(1, "class_name", [ds.classes[k] for k in flips["label"]])
    if ds.g_test is None:
        return flips, None
    frame["group"] = ds.g_test.cpu().numpy()
    subgroups = (
        frame.groupby(["label", "group"])
        .agg(
            n_test=("flipped", "size"),
            n_flipped=("flipped", "sum"),
            accuracy_a=("correct_a", "mean"),
            accuracy_b=("correct_b", "mean"),
        )
        .reset_index()
    )
    return flips, subgroups


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = train.ReplicaSpec()
    parser.add_argument("--factor", required=True, choices=list(FACTORS), help="what differs between the replicas")
    parser.add_argument("--dataset", default=d.dataset, help=f"dataset name (default {d.dataset})")
    parser.add_argument("--model", default=d.model, help=f"model name (default {d.model})")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    parser.add_argument(
        "--batch-size", type=int, default=d.batch_size, help=f"examples per step (default {d.batch_size})"
    )
    parser.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    parser.add_argument(
        "--augment", action="store_true", help="pad-and-crop augmentation (seeded, identical in A and B)"
    )
    parser.add_argument("--base-seed", type=int, default=d.base_seed, help="root of the per-source seeds")
    parser.add_argument("--device", default=d.device, help=f"device (default {d.device})")
    parser.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help=f"intra-op threads of replica A, and of B except under --factor threads "
        f"(default {d.threads}; CPU non-determinism under --factor impl needs >= 2)",
    )
    parser.add_argument(
        "--threads-b", type=int, default=2, help="replica B's threads under --factor threads (default 2)"
    )
    parser.add_argument("--precision", default=d.precision, choices=noise.PRECISIONS)
    parser.add_argument("--data-root", default=None, help="root of real datasets (else $NNRANDOMNESS_DATA)")
    parser.add_argument("--no-trace", action="store_true", help="skip the op trace (faster; no first divergent op)")
    parser.add_argument("--out", default=None, help="directory for report.json, history.parquet, flips.parquet")


def main(args: argparse.Namespace) -> int:
    spec = train.ReplicaSpec(
        dataset=args.dataset,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        augment=args.augment,
        base_seed=args.base_seed,
        device=args.device,
        threads=args.threads,
        precision=args.precision,
        data_root=args.data_root,
    )
    try:
        report = locate_divergence(spec, args.factor, threads_b=args.threads_b, trace=not args.no_trace, progress=True)
    except (ValueError, FileNotFoundError) as e:  # bad names or values, missing data: raised before any work
        print(f"nnrandomness locate: error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    if args.out:
        write_report(report, args.out)
        print(f"written to {args.out}")
    return 0


def write_report(report: DivergenceReport, out: str | Path) -> Path:
    """report.json (findings, replicas, environment) plus history/flips/subgroups as Parquet."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report.history.to_parquet(out / "history.parquet", index=False)
    report.flips.to_parquet(out / "flips.parquet", index=False)
    if report.subgroups is not None:
        report.subgroups.to_parquet(out / "subgroups.parquet", index=False)
    skip = {"history", "flips", "subgroups", "weights"}
    fields = {f.name: getattr(report, f.name) for f in dataclasses.fields(report) if f.name not in skip}
    (out / "report.json").write_text(json.dumps({**fields, "summary": report.summary()}, indent=1, default=str))
    return out
