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
# (per-class)=
# # Per-class accuracy
#
# Top-1 accuracy averages over every test example, so errors that move from one class to
# another cancel out. Figure 3 of {cite:t}`zhuang2022randomness` looks underneath: the accuracy
# on each class separately, and how much it moves between replicas. This chapter compares, per
# setting, the standard deviation across replicas of each class's accuracy with the standard
# deviation of top-1 accuracy.

# %%
import pandas as pd
from IPython.display import Markdown

from nnrandomness import PAPER_SETTINGS, analysis, charts, findings, store

charts.enable()

# %% tags=["parameters"]
runs_root = "../data/runs"  # the run store, relative to notebooks/
hardware = "cpu-1t"  # hardware label of the cell
dataset = "digits"  # dataset of the cell
model = "smallcnn"  # model of the cell

# %% [markdown]
# One row per setting: the spread of top-1 accuracy, the mean over classes of the spread of
# per-class accuracy, and the largest per-class spread with its class.

# %%
runs = store.load_runs(runs_root, hardware=hardware, dataset=dataset, model=model)
classes = analysis.per_class(runs)
spread = analysis.per_class_spread(runs, classes)
gaps = analysis.missing(runs, hardware=hardware, dataset=dataset, model=model, settings=PAPER_SETTINGS)
Markdown(analysis.missing_note(gaps, runs_root)) if gaps else None

# %%
pd.DataFrame({
    "setting": spread["setting"], "replicas": spread["n_replicas"], "top-1 std": spread["acc_std"].map(findings.pct),
    "per-class std (mean)": spread["class_std_mean"].map(findings.pct),
    "per-class std (max)": spread["class_std_max"].map(findings.pct),
    "class with max": spread["class_max"].map(lambda c: findings.as_text(c, "int")),
    "max / top-1": spread["ratio_max"].round(1),
}).set_index("setting")

# %% tags=["hide-input", "remove-output"]
main_cell = analysis.cell_name(dataset, model)
n = int(spread["n_replicas"].min()) if len(spread) else 0
columns = {"acc_std": "pct", "class_std_mean": "pct", "class_std_max": "pct", "class_max": "int", "ratio_max": "ratio"}
charts.glue_numbers(findings.prose_values(spread, columns))

# %% [markdown]
# ## Classes move more than the top line
#
# Under ALGO, top-1 accuracy has a standard deviation of {glue:text}`algo_acc_std` across
# replicas. The accuracy of a single class moves {glue:text}`algo_class_std_mean` on average over
# the classes, and up to {glue:text}`algo_class_std_max` (class {glue:text}`algo_class_max`),
# {glue:text}`algo_ratio_max` times the top-line spread. Part of the difference is arithmetic:
# a class holds only a share of the test examples (a tenth, with ten balanced classes), so one
# flipped example moves its accuracy that many times more than it moves top-1 accuracy. The rest
# is that replicas trade errors between classes: where one replica gains on a class another
# loses, and the average over classes hides it.
#
# Click a setting in the legend to show only its classes on the right (shift-click adds more);
# click an empty spot of the legend to show all again.
#
# :::{glue:figure} fig-per-class-spread
# :name: fig-per-class-spread
#
# {glue:text}`fig-per-class-spread-caption`
# :::

# %% tags=["hide-input", "remove-output"]
chart = (charts.per_class_chart(classes, spread) if len(spread)
         else charts.missing_chart(f"no runs of {hardware}/{main_cell} in the store"))
charts.glue_figure("per-class", "spread", chart,
                   "Left: standard deviation across replicas of each class's test accuracy (one tick per class) "
                   "and of top-1 accuracy (diamond), per setting. Right: the per-class standard deviations of the "
                   "settings picked in the legend", n=n, hardware=hardware, cell=main_cell)

# %% [markdown]
# ## Which classes move
#
# The classes whose accuracy spreads most under ALGO, with their mean accuracy. A class can only
# move if some replicas get some of its examples wrong, so the classes that move are found among
# those below 100 % on average: their hard examples sit near a decision boundary that each
# replica draws a little differently.

# %%
algo = classes[classes.setting == "ALGO"].sort_values(["std", "class"], ascending=[False, True]).head(5)
pd.DataFrame({"class": algo["class"], "test examples": algo["n_examples"],
              "mean accuracy": algo["mean"].map(findings.pct),
              "std across replicas": algo["std"].map(findings.pct)}).set_index("class")
