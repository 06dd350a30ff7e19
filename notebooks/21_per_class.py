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
# deviation of top-1 accuracy, and then with what independent examples would give: a class
# holds a tenth of the test set, so its accuracy moves more than the top line even if every
# example flipped on its own.

# %%
import pandas as pd
from IPython.display import Markdown

from nnrandomness import PAPER_SETTINGS, analysis, charts, findings, store

charts.enable()

# %% tags=["parameters"]
runs_root = "../data/runs"  # the run store, relative to notebooks/
hardware = "cpu-1t"  # hardware label of the cell
dataset = "mnist1d"  # dataset of the cell
model = "cnn1d"  # model of the cell

# %% [markdown]
# One row per setting: the spread of top-1 accuracy, the mean over classes of the spread of
# per-class accuracy, and the largest per-class spread with its class.

# %%
# A name the store lacks stops here, listing what it holds (a typo would otherwise show empty tables).
analysis.check_selection(runs_root, hardware=hardware, dataset=dataset, model=model)
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

# %% tags=["remove-cell"]
main_cell = analysis.cell_name(dataset, model)
# the settings that spread (3 or more replicas); CONTROL and IMPL need only 2: they are bit-identical
n = int(spread["n_replicas"][spread["n_replicas"] >= 3].min()) if (spread["n_replicas"] >= 3).any() else 0
columns = {"acc_std": "pct", "class_std_mean": "pct", "class_std_max": "pct", "class_max": "int", "ratio_max": "ratio"}
charts.glue_numbers(findings.prose_values(spread, columns))

# %% [markdown]
# ## Per-class spread beside the top line
#
# Under ALGO, top-1 accuracy has a standard deviation of {glue:text}`algo_acc_std` across
# replicas. The accuracy of a single class moves {glue:text}`algo_class_std_mean` on average over
# the classes, and up to {glue:text}`algo_class_std_max` (class {glue:text}`algo_class_max`),
# {glue:text}`algo_ratio_max` times the top-line spread. Part of that is arithmetic: a class
# holds only a share of the test examples (a tenth, with ten balanced classes), so one flipped
# example moves its accuracy that many times more than it moves top-1 accuracy. The next section
# asks whether anything is left beyond it.
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
# ## More than independent examples would give?
#
# If every test example were right in each replica independently, at its own observed rate (the
# share of replicas that get it right), classes would still spread, and the largest of ten
# spreads would still sit well above the top line's. That null model is simulated exactly
# (per class, a Poisson-binomial count of right examples in each simulated replica). Two
# statistics per setting: the largest per-class SD (does the most variable class move more than
# its own examples would make it?) and the ratio above, that SD over the top-1 SD (does it move
# more *relative to the top line* than chance gives? The top line moves too, when replicas
# differ as models). Per test: the observed statistic, the null's median and central 95 % range,
# the excess over the null's median with its 95 % interval (BCa over replicas), and the
# one-sided p-value, adjusted with Holm across every test of this chapter.

# %%
cell = {"hardware": hardware, "dataset": dataset, "model": model}
present = analysis.setting_order(spread["setting"])
tests = analysis.class_null_tests(runs, cell, settings=present)
claims = findings.null_claims(tests)
findings.null_table(tests, claims)

# %% tags=["remove-cell"]
absent = f"no ALGO runs of {hardware}/{main_cell} with 3 or more replicas"
charts.glue_numbers({"claim_class_max_algo": absent, "claim_class_ratio_algo": absent} | findings.claim_values(claims))

# %% [markdown]
# {glue:text}`claim_class_max_algo`. {glue:text}`claim_class_ratio_algo`. Every setting's
# verdicts, worded from their tests:

# %%
Markdown("\n".join(f"- {findings.word(c)}." for c in claims) or "No setting has 3 or more replicas.")

# %% [markdown]
# Per class, the observed spread against the null's range, for each setting: a dark point
# right of its grey bar is a class that moves more than its own examples, flipping on their own,
# would make it.
#
# :::{glue:figure} fig-per-class-null
# :name: fig-per-class-null
#
# {glue:text}`fig-per-class-null-caption`
# :::

# %% tags=["hide-input", "remove-output"]
groups = analysis.spread_null_groups(runs, cell, settings=present)
chart = (charts.null_range_chart(groups.assign(name=groups["class"].astype(str)), label="class",
                                 title="Per-class spread against independent examples") if len(groups)
         else charts.missing_chart(f"no setting of {hardware}/{main_cell} with 3 or more replicas"))
charts.glue_figure("per-class", "null", chart,
                   "Standard deviation across replicas of each class's accuracy (dark point) against what "
                   "independent examples give (grey bar: central 95 % of the simulated sets of replicas; "
                   "tick: median), one panel per setting", n=n, hardware=hardware, cell=main_cell)

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
