# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# (runs)=
# # The runs
#
# What the run store holds: every cell (hardware, dataset, model, setting) with its replicas and
# final test accuracy, the machines and software that produced them (from the manifest each
# replica writes), the check that CONTROL replicas are bit-identical, the training curves, and
# the executed training notebooks of the batch jobs.

# %%
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from nnrandomness import analysis, charts, findings, store

charts.enable()

# %% tags=["parameters"]
runs_root = "../data/runs"  # the run store, relative to notebooks/
executed_root = "../data/executed"  # executed training notebooks of the batch jobs, relative to notebooks/

# %% [markdown]
# ## The cells

# %%
runs = store.load_runs(runs_root)
table = analysis.runs_table(runs)
if table.empty:
    display(Markdown(f"**The run store `{runs_root}` holds no complete replica.** Fill it with `make book` (it "
                     "runs `nnrandomness run plans/default.yaml`), then re-execute this chapter."))
pd.DataFrame({
    "hardware": table["hardware"], "dataset": table["dataset"], "model": table["model"], "setting": table["setting"],
    "replicas": table["replicas"], "epochs": table["epochs"], "threads": table["threads"], "device": table["device"],
    "precision": table["precision"], "final accuracy (mean)": table["acc_mean"].map(findings.pct),
    "min": table["acc_min"].map(findings.pct), "max": table["acc_max"].map(findings.pct),
}).set_index(["hardware", "dataset", "model", "setting"])

# %% [markdown]
# Replica directories that are incomplete (interrupted before their manifest was written) or
# damaged (a file fails its checksum) are never read as results; they are listed here.

# %%
root = Path(runs_root)
problems = pd.DataFrame([{"replica directory": Path(p).relative_to(root).as_posix() if Path(p).is_relative_to(root)
                          else p, "reason": why} for p, why in runs.problems], columns=["replica directory", "reason"])
problems if len(problems) else Markdown("No incomplete or damaged replica.")

# %% [markdown]
# ## Machines and software
#
# One column per hardware label, from the manifests of its replicas. A row with several values
# means the replicas of one label did not all run on the same software.

# %%
fields = ["python", "torch", "torchvision", "numpy", "cuda", "cudnn", "cpu_model", "cpu_count", "cpu_capability",
          "gpu_name", "num_threads", "platform", "git_commit"]
envs = {}
for hw, reps in (runs.replicas.groupby("hardware") if len(runs.replicas) else []):
    manifests = [store.read_manifest(Path(p), verify=False)["environment"] for p in reps["path"]]
    envs[hw] = {f: ", ".join(sorted({str(m.get(f)) for m in manifests})) for f in fields}
pd.DataFrame(envs, index=fields) if envs else None

# %% [markdown]
# ## CONTROL is bit-identical
#
# Every cell whose setting promises bit-identical replicas (nothing varies, deterministic
# kernels): the number of distinct hashes of the final weights and of the predictions must be 1.

# %%
ident = analysis.identity(runs)
ident[ident["expects_identical"].astype(bool)].drop(columns=["expects_identical"]).reset_index(drop=True)

# %% [markdown]
# ## Training curves
#
# Test accuracy after each epoch, the mean over a cell's replicas; one panel per hardware,
# dataset and model. Click a setting in the legend to bring it forward.
#
# :::{glue:figure} fig-runs-curves
# :name: fig-runs-curves
#
# {glue:text}`fig-runs-curves-caption`
# :::

# %% tags=["hide-input", "remove-output"]
curves = analysis.training_curves(runs)
if len(curves):
    chart = charts.training_curves(curves)
    n, labels = int(curves["replicas"].min()), ", ".join(sorted(curves["hardware"].unique()))
else:
    chart = charts.missing_chart(f"no training histories in {runs_root}")
    n, labels = 0, "none"
charts.glue_figure("runs", "curves", chart, "Mean test accuracy over the replicas of each cell after every epoch, "
                   "one line per setting", n=n, hardware=labels, cell="every cell of the store")

# %% [markdown]
# ## The executed training notebooks
#
# Each batch job executes the training chapter ({ref}`training`) with its parameters, one job per
# cell, and keeps the executed notebook, failed ones too, under `data/executed/` in the
# repository (`<hardware>/<dataset>/<model>/<setting>.ipynb`): open one to see exactly what a
# job ran and printed.

# %%
executed_notebooks = sorted(Path(executed_root).rglob("*.ipynb")) if Path(executed_root).is_dir() else []
if executed_notebooks:
    out = pd.DataFrame({
        "notebook": [p.relative_to(executed_root).as_posix() for p in executed_notebooks],
        "cells with an error": [p.read_text(encoding="utf-8").count('"output_type": "error"')
                                for p in executed_notebooks],
    }).set_index("notebook")
else:
    out = Markdown(f"No executed job notebooks under `{executed_root}` (they appear there once a plan has run).")
out
