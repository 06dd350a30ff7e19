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
# (hardware)=
# # Hardware, precision and threads
#
# A replica's bits depend on the machine it ran on, not only on its seeds: the number of CPU
# threads splits each sum differently, another CPU model or GPU picks other kernels and
# instruction sets, and a lower precision rounds elsewhere. The run store keeps each machine's
# replicas under their own hardware label (`cpu-1t`, `cpu-2t`, `cuda-nvidia-h100-...`), with the
# same seeds for the same replica index. This chapter compares, for every cell stored under two
# or more labels, replica $k$ on one label with replica $k$ on the other: their disagreement is
# the pure effect of the tooling, since nothing else differs.

# %%
import pandas as pd
from IPython.display import Markdown

from nnrandomness import analysis, charts, findings, store

charts.enable()

# %% tags=["parameters"]
runs_root = "../data/runs"  # the run store, relative to notebooks/
dataset = "digits"  # dataset of the cells compared
model = "smallcnn"  # model of the cells compared
weights = True  # also compare the final weights (L2); reads every replica's weights file

# %% [markdown]
# The hardware labels in the store, and how many replicas each holds per setting:

# %%
runs = store.load_runs(runs_root, dataset=dataset, model=model)
cells = runs.cells()
labels = sorted(cells["hardware"].unique()) if len(cells) else []
cells.pivot_table(index="setting", columns="hardware", values="replicas", aggfunc="sum", fill_value=0).loc[
    lambda d: analysis.setting_order(d.index)] if len(cells) else Markdown(
    analysis.missing_note([f"*/{dataset}/{model}/*: no replicas"], runs_root))

# %%
compare = analysis.hardware_compare(runs, weights=weights)
if len(labels) < 2:
    note = (f"**One hardware label only.** The store holds {dataset}/{model} runs under "
            f"{', '.join(f'`{h}`' for h in labels) or 'no label'}; a comparison needs the same cell under two "
            "labels. The default plan adds `cpu-2t` (CONTROL and ALGO at two threads); a GPU plan adds a "
            "`cuda-...` label. Run one, then re-execute this chapter.")
elif compare.empty:
    note = "**No cell is stored under two hardware labels** with the same test set; nothing to compare."
else:
    note = ""
Markdown(note) if note else None

# %%
None if compare.empty else pd.DataFrame({
    "setting": compare["setting"], "a": compare["hardware_a"], "b": compare["hardware_b"],
    "matched replicas": compare["n_matched"], "bit-identical pairs": compare["n_identical"],
    "churn a vs b (same seeds)": compare["churn_matched"].map(findings.pct),
    "churn a vs b (all pairs)": compare["churn_cross"].map(findings.pct),
    "churn within a": compare["churn_within_a"].map(findings.pct),
    "churn within b": compare["churn_within_b"].map(findings.pct),
    "L2 a vs b (same seeds)": compare["l2_matched"].round(3),
    "accuracy a": compare["acc_mean_a"].map(findings.pct), "accuracy b": compare["acc_mean_b"].map(findings.pct),
}).set_index(["setting", "a", "b"])

# %% tags=["hide-input", "remove-output"]
main_cell = analysis.cell_name(dataset, model)
first = compare.drop_duplicates("setting")  # the first pair of labels of each setting
columns = {"churn_matched": "pct", "churn_within_a": "pct", "churn_within_b": "pct", "churn_cross": "pct",
           "n_matched": "int", "n_identical": "int", "l2_matched": "2f", "hardware_a": "text", "hardware_b": "text"}
charts.glue_numbers(findings.prose_values(first, columns))

# %% [markdown]
# ## The same seeds on two machines
#
# CONTROL replicas are bit-identical on one label. Between {glue:text}`control_hardware_a` and
# {glue:text}`control_hardware_b`, replica $k$ against replica $k$ (same seeds, same data order,
# deterministic kernels), {glue:text}`control_n_identical` of {glue:text}`control_n_matched` pairs
# are bit-identical and they disagree on {glue:text}`control_churn_matched` of the test examples,
# with final weights {glue:text}`control_l2_matched` apart. On the CPU the two labels differ only
# in the number of threads: with two threads a sum is split in two halves whose partial results
# are added at the end, which rounds differently from one running sum; the difference starts in
# the last bit and training amplifies it.
#
# With the algorithmic sources varying too (ALGO), replicas on one label disagree on
# {glue:text}`algo_churn_within_a` ({glue:text}`algo_hardware_a`); replica $k$ on the two labels
# disagrees on {glue:text}`algo_churn_matched`. A tooling change alone moves predictions by an
# amount to set beside what all of the algorithmic randomness does.
#
# :::{glue:figure} fig-hardware-churn
# :name: fig-hardware-churn
#
# {glue:text}`fig-hardware-churn-caption`
# :::

# %% tags=["hide-input", "remove-output"]
if len(compare):
    chart = charts.hardware_churn(compare)
    n, where = int(compare["n_matched"].min()), f"{main_cell} on {', '.join(labels)}"
else:
    chart = charts.missing_chart(f"no {main_cell} cell stored under two hardware labels")
    n, where = 0, main_cell
charts.glue_figure("hardware", "churn", chart,
                   "Predictive churn between replicas on one hardware label (within a, within b), between replica k "
                   "on one label and replica k on the other (same seeds: the tooling alone) and between any two "
                   "replicas on different labels, per setting", n=n, hardware=" and ".join(labels) or "none",
                   cell=where)

# %% [markdown]
# ## Every analysis, per hardware label
#
# Churn and L2 are only two of the book's numbers. For every (dataset, model, setting) stored
# under two or more hardware labels, in the whole store (not only the cell above), the table
# puts the headline number of each analysis chapter side by side per label: the top line
# ({ref}`topline`: accuracy mean and std, churn, mean L2 between final weights), the per-class
# spread (the largest and the mean std of per-class accuracy), the per-example view (test
# examples on which the replicas do not all agree; Jordan's observed variance of accuracy
# against the variance that independent per-example coin flips would give) and, for datasets
# with a group attribute only, the mean FNR std of rare and of common subgroups.

# %%
every = store.load_runs(runs_root)
per_hw = analysis.by_hardware(every, weights=weights)
hw_note, hw_table = findings.hardware_table(per_hw, every.replicas["hardware"])
Markdown(hw_note) if hw_note else hw_table

# %% tags=["hide-input", "remove-output"]
charts.glue_numbers(findings.hardware_values(per_hw))  # every_cell, every_acc_std_a, ...

# %% [markdown]
# On {glue:text}`every_cell`, accuracy varies by {glue:text}`every_acc_std_a` on
# {glue:text}`every_hardware_a` and {glue:text}`every_acc_std_b` on
# {glue:text}`every_hardware_b`, the most variable class by {glue:text}`every_class_std_max_a`
# and {glue:text}`every_class_std_max_b`, {glue:text}`every_n_flip_a` and
# {glue:text}`every_n_flip_b` test examples flip, and the observed variance of accuracy
# ({glue:text}`every_observed_var_a`, {glue:text}`every_observed_var_b`) stands beside the one
# coin flips predict ({glue:text}`every_predicted_var_a`, {glue:text}`every_predicted_var_b`).

# %% [markdown]
# ## What is still to come
#
# GPU hosts add their own labels (one per GPU model) when a GPU plan runs; the same comparison
# then measures what moving a run from the CPU to a GPU, or from one GPU generation to another,
# does with identical seeds, and IMPL stops being identical to CONTROL (see {ref}`topline`).
# Precision (fp32, TF32, bf16) is a field of each replica's spec and is compared the same way
# once a plan varies it.
