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
# What the run store holds: every cell (hardware, dataset, model, setting) with its number of
# replicas, their mean final test accuracy, training time and bit identity; the commits the
# replicas were produced from and the machines and software they ran on (from the manifest each
# replica writes); the training curves; and the executed training notebooks of the batch jobs.

# %%
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from nnrandomness import analysis, charts, findings, overhead, store

charts.enable()

# %% tags=["parameters"]
runs_root = "../data/runs"  # the run store, relative to notebooks/
executed_root = "../data/executed"  # executed training notebooks of the batch jobs, relative to notebooks/
overhead_root = ".."  # root of the overhead store (<root>/data/overhead/<hardware>/), relative to notebooks/
downloads_root = "../data/downloads"  # where the downloadable tables are written, relative to notebooks/

# %% [markdown]
# ## The cells
#
# One row per cell: its replicas, their mean final test accuracy and mean training seconds per
# replica (as each manifest records it), whether all its replicas hold the same bits (one
# weights hash and one predictions hash; "-" for a single replica) and the commit they ran from.

# %%
runs = analysis.load_summary(runs_root)  # the store without its predictions, which no table here needs
table = analysis.runs_table(runs)
if table.empty:
    display(Markdown(f"**The run store `{runs_root}` holds no complete replica.** Fill it with `make book` (it "
                     "runs `nnrandomness run plans/default.yaml`), then re-execute this chapter."))
pd.DataFrame({
    "hardware": table["hardware"], "dataset": table["dataset"], "model": table["model"], "setting": table["setting"],
    "replicas": table["replicas"], "accuracy (mean)": table["acc_mean"].map(findings.pct),
    "train s per replica": table["train_seconds"].map(lambda s: findings.as_text(s, "2f")),
    "bit-identical": table["identical"].map(lambda v: "-" if v is None else findings.as_text(v, "flag")),
    "git commit": table["git_commit"].str.replace(r"\b([0-9a-f]{10})[0-9a-f]{30}", r"\1", regex=True),
}).set_index(["hardware", "dataset", "model", "setting"])

# %% [markdown]
# The analysis chapters check their parameters (`hardware`, `dataset`, `model`, `settings`)
# against the store before any work (`analysis.check_selection`): a name the store lacks stops
# the chapter with the list of what it holds, unless the package knows the name (then the runs
# are missing, and the chapter says so). What this store holds, by parameter:

# %%
held = analysis.held(runs_root)
names = {key: sorted(set(held[key])) for key in analysis.CELL} | {"setting": analysis.setting_order(held["setting"])}
pd.DataFrame({"holds": {key: ", ".join(v) for key, v in names.items()}}).rename_axis("parameter")

# %% [markdown]
# ## The commits
#
# The git commit of the package each replica ran from, as its manifest records it (`+dirty`:
# the working tree had uncommitted changes). {glue:text}`runs_commits`

# %%
reps = runs.replicas.reindex(columns=analysis.CELL + ["replica", "git_commit"]).fillna({"git_commit": "(not recorded)"})
commits = pd.DataFrame({
    "replicas": reps.groupby("git_commit").size(),
    "cells": reps.drop_duplicates(analysis.CELL + ["git_commit"]).groupby("git_commit").size(),
}).rename_axis("git commit")
commits

# %% tags=["remove-cell"]
named = [str(c) for c in commits.index]
charts.glue_numbers({"runs_commits": (
    f"The {len(runs.replicas)} replicas ran from {'commit' if len(named) == 1 else f'{len(named)} commits:'} "
    + ", ".join(f"`{c}`" for c in named) + "." if named else "The store holds no replica.")})

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
# kernels, as the replicas' manifests record the setting): its replicas must hold one weights
# hash and one predictions hash.

# %%
promised = table[table["expects_identical"].astype(bool)] if len(table) else table
promised[analysis.CELL + ["replicas", "identical"]].reset_index(drop=True)

# %% [markdown]
# ## IMPL differs on a GPU
#
# Where only the tooling varies (non-deterministic kernels, every seed fixed: IMPL), replicas
# trained on a GPU should differ. A cell of such replicas that are all bit-identical on CUDA means
# that the tooling varied nothing there: the kernels ran deterministically after all, or the
# replicas shared one process and its autotuned algorithms. The runner warns of such a cell at the
# end of a run (`analysis.identical_tooling_warnings`), and this section lists the same warnings.
# On the CPU, IMPL replicas are identical by construction: its kernels are deterministic at a fixed
# thread count ({ref}`noise-sources-cpu-limits`), so no CPU cell is judged here.

# %%
tooling_warnings = analysis.identical_tooling_warnings(runs)
devices = runs.replicas.get("device", pd.Series(dtype=str)).astype(str)
Markdown("\n".join(f"- **Warning.** {w}" for w in tooling_warnings) if tooling_warnings else
         "No CUDA cell of IMPL replicas is all bit-identical "
         f"({devices.str.startswith('cuda').sum()} of the store's {len(devices)} replicas ran on CUDA).")

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
# job ran and printed, or download it here:
#
# :::{glue:md} runs_executed
# :format: myst
# :::

# %%
executed_notebooks = sorted(Path(executed_root).rglob("*.ipynb")) if Path(executed_root).is_dir() else []
jobs = pd.DataFrame({
    "notebook": [p.relative_to(executed_root).as_posix() for p in executed_notebooks],
    "cells with an error": [p.read_text(encoding="utf-8").count('"output_type": "error"') for p in executed_notebooks],
}, columns=["notebook", "cells with an error"]).set_index("notebook")
jobs if len(jobs) else Markdown(f"No executed job notebooks under `{executed_root}` (they appear there once a plan "
                                "has run).")

# %% tags=["remove-cell"]
# The book's download links (relative to this chapter, as {download} wants them), glued for the
# directive above; JupyterLab lists the same notebooks in the table of the cell before.
glue("runs_executed", Markdown("\n".join(
    f"- {{download}}`{name} <{Path(executed_root).as_posix()}/{name}>`" for name in jobs.index
) or "*No executed job notebooks.*"), display=False)

# %% [markdown]
# ## Downloads
#
# The run store summary, one row per replica: its cell and replica id, final test accuracy and
# loss, the setting as recorded (varied sources, deterministic kernels), the seed of every source,
# the weights and predictions hashes, training and evaluation seconds, torch and the machine, and
# the provenance of the row: the git commit the replica ran from and that commit's date. And the
# overhead sweeps of {ref}`determinism-cost`, one row per model and configuration, with the commit
# and machine of each sweep. Each as CSV and as Parquet:
#
# :::{glue:md} runs_downloads
# :format: myst
# :::

# %%
# Written beside the store, byte-stable (the same store gives the same bytes): the committed
# copies stay unchanged when the chapter is re-executed on the same runs.
summary = analysis.replica_export(runs_root)
sweeps = overhead.read_all(overhead.store_root(repository=overhead_root))
manifests = {label: overhead.read_results(overhead.store_root(repository=overhead_root), label)[1] for label in sweeps}
sweep_rows = findings.overhead_export(sweeps, manifests, repository=overhead_root)
written = {
    "runs": analysis.write_export(summary, Path(downloads_root) / "runs"),
    "overhead": analysis.write_export(sweep_rows, Path(downloads_root) / "overhead"),
}
pd.DataFrame({
    "file": [p.name for paths in written.values() for p in paths],
    "rows": [len(frame) for frame in (summary, sweep_rows) for _ in range(2)],
    "commits": [", ".join(sorted(set(frame["git_commit"].dropna()))) or "-" for frame in (summary, sweep_rows)
                for _ in range(2)],
}).set_index("file")

# %% tags=["remove-cell"]
# The book's download links, relative to this chapter as {download} wants them.
glue("runs_downloads", Markdown("\n".join(
    f"- {{download}}`{p.name} <{p.as_posix()}>`: {what}" for name, what in (
        ("runs", "the run store summary, one row per replica"),
        ("overhead", "the overhead sweeps, one row per model and configuration"),
    ) for p in written[name]
)), display=False)
