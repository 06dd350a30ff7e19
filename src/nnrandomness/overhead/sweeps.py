"""A sweep: every workload of a plan (models x thread counts x precisions) x its configurations.

Its plan (`Plan`, read from a section of plans/overhead.yaml by `load_plan`) is its own, not
`nnrandomness.plan`'s: that machinery expands training cells (datasets x models x settings) into
papermill jobs checked against the training notebook's parameter contract, while a sweep is one
list of models timed in one process per device type, with per-device sections and sizes that
training plans do not have. All they share is reading YAML and naming unknown keys, a few lines.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import models
from .timing import BASELINE, ROW_COLUMNS, Workload, check_configuration, measure


@dataclass
class Plan:
    """What a sweep runs on one device type: the tiny defaults here, the study's in plans/overhead.yaml."""

    models: tuple[str, ...] = ("smallcnn",)
    configurations: tuple[str, ...] = (BASELINE, "det_full", "det_no_fill")
    image_size: int = 32
    image_size_per_model: dict = dataclasses.field(default_factory=dict)  # model -> side (e.g. inception_v3: 75)
    batch_size: int = 8
    num_classes: int = 1000
    precisions: tuple[str, ...] = ("fp32",)
    threads: tuple[int | None, ...] = (1,)
    steps: int = 3
    warmup: int = 1
    repeats: int = 2
    seed: int = 0

    def workloads(self, device: str) -> list[Workload]:
        """Every (model, threads, precision) workload, models outermost, each validated."""
        for name in self.models:
            models.check_model(name)
        for name in self.configurations:
            check_configuration(name)
        out = []
        for name in self.models:
            for threads in self.threads:
                for precision in self.precisions:
                    w = Workload(
                        name,
                        self.image_size_per_model.get(name, self.image_size),
                        self.batch_size,
                        self.num_classes,
                        device,
                        precision,
                        threads,
                        self.steps,
                        self.warmup,
                        self.repeats,
                        self.seed,
                    )
                    w.validate()
                    out.append(w)
        return out


def load_plan(path: str | Path, device_type: str) -> Plan:
    """The `devices.<device_type>` section of an overhead plan, with the top-level `models`."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text()) or {}
    sections = raw.get("devices", {})
    if device_type not in sections:
        raise ValueError(f"plan {path} has no section devices.{device_type}; it has: {', '.join(sections) or 'none'}")
    section = {**{k: v for k, v in raw.items() if k != "devices"}, **sections[device_type]}
    valid = {f.name for f in dataclasses.fields(Plan)}
    unknown = set(section) - valid
    if unknown:
        raise ValueError(f"plan {path}: unknown key(s) {sorted(unknown)}; valid keys: {', '.join(sorted(valid))}")
    for key in ("models", "configurations", "precisions", "threads"):
        if key in section:
            section[key] = tuple(section[key])
    return Plan(**section)


def sweep(plan: Plan, device: str = "cpu", *, progress: bool = True) -> pd.DataFrame:
    """Every workload of `plan` on `device` x its configurations: a tidy frame of `ROW_COLUMNS`."""
    workloads = plan.workloads(device)  # validates everything before any timing
    by_model: dict[str, list[Workload]] = {}
    for w in workloads:
        by_model.setdefault(w.model, []).append(w)
    bar = by_model.items()
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, total=len(by_model), desc="overhead", unit="model")
    rows = []
    for name, ws in bar:
        if progress:
            bar.set_postfix_str(name)
        for w in ws:
            rows += measure(w, list(plan.configurations))
    return pd.DataFrame(rows, columns=ROW_COLUMNS)
