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

# %%

# %% [markdown]
# (claims)=
# # Claims and their tests
#
# Every finding sentence of this book is produced from a test result: it reads as established
# only when its test rejects at 5 % after the {term}`Holm correction` within its family of
# comparisons, and otherwise says what the data cannot tell apart. This page lists every claim
# of the study's main cell in one table, with its test, statistic, effect and 95 % interval, the
# sample sizes, the p-value before and after Holm, and the verdict. Quantities reported with an
# interval and no test (the share of ULP replicas that end with CONTROL's predictions) read
# *estimate*. The introduction quotes its claims from here.

# %%
import pandas as pd
from IPython.display import Markdown

from nnrandomness import PAPER_SETTINGS, analysis, charts, findings, load_dataset, store

charts.enable()

# %% tags=["parameters"]
runs_root = "../data/runs"  # the run store, relative to notebooks/
groups_dataset = "mnist1d_groups"  # the dataset with a nuisance attribute (subgroup claims)
architectures = ["cnn1d_bn", "mlp1d"]  # other models on `dataset` whose churn is compared with `model`'s
hardware = "cpu-1t"  # hardware label of the study's main cell
dataset = "mnist1d"  # its dataset
model = "cnn1d"  # its model
seed = 0  # bootstrap and permutation seed: fixed, so re-running gives the same numbers
n_test = 2000  # permutations (and bootstrap resamples) of the architecture tests
n_boot = 2000  # bootstrap resamples per interval of the summary figure

# %% [markdown]
# The replicas on `hardware`: the main cell (`dataset`/`model`), the other architectures and the
# subgroup data.

# %%
# A name the store lacks stops here, listing what it holds (a typo would otherwise show empty tables).
analysis.check_selection(runs_root, hardware=hardware, dataset=[dataset, groups_dataset], model=[model, *architectures])
runs = store.load_runs(runs_root, hardware=hardware)
cell = {"hardware": hardware, "dataset": dataset, "model": model}
gaps = analysis.missing(runs, hardware=hardware, dataset=dataset, model=model, settings=PAPER_SETTINGS)
Markdown(analysis.missing_note(gaps, runs_root)) if gaps else None

# %% [markdown]
# ## Every claim
#
# The families, each corrected with Holm on its own: **churn** (each single source against ALGO
# and every pair of sources, {ref}`topline`), **sd** (every setting's spread of accuracy against
# ALGO's), **class** (the largest per-class spread of accuracy) and **subgroup** (the false-negative
# rates of the subgroups rare in training, and of the common ones) against the
# {term}`independent-examples null` ({ref}`per-class` and {ref}`subgroups`), **ulp** (the one-ULP
# poke against ALGO, and how many ULP replicas end with CONTROL's predictions), **variance**
# ({term}`Jordan's estimator` against the direct measurement on extra test sets,
# {ref}`per-example`) and **architecture** (churn of the BatchNorm network and of the MLP
# against the main model).

# %%
# Rare subgroups are rare in TRAINING, by design (the test sets hold every subgroup in equal shares).
_train = load_dataset(groups_dataset)
rare = analysis.rare_subgroups(_train.y_train.numpy(), _train.g_train.numpy())
claims = findings.study_claims(runs, cell, groups_dataset=groups_dataset, rare=rare)
claims["architecture"] = findings.architecture_claims(
    analysis.architecture_tests(runs, cell, architectures, n=n_test, seed=seed))
every = [c for family in claims.values() for c in family]
pd.concat([findings.claims_table(family).assign(family=name) for name, family in claims.items()],
          ignore_index=True).set_index(["family", "claim"])

# %% tags=["remove-cell"]
# The introduction's sentences: claim_<name> for every name it quotes (n/a when the runs are missing).
findings.glue_values({**findings.intro_claim_values(every), "claims_undecided": findings.undecided_text(every),
                      "claims_undecided_count": findings.undecided_text(every, listed=False),
                      "impl_twins": findings.twin_text(analysis.twin_identity(runs.select(**cell)))})

# %% [markdown]
# What the tests leave open: {glue:text}`claims_undecided`

# %% [markdown]
# ## Summary figure
#
# The spread of accuracy and the churn of every setting on the main cell, with their intervals:
# the introduction shows this figure.
#
# :::{glue:figure} fig-claims-summary
# :name: fig-claims-summary
#
# {glue:text}`fig-claims-summary-caption`
# :::
#
# ::::{dropdown} The same figure as a static image, as the introduction shows it
# ```{glue} fig-claims-summary-png
# ```
# ::::

# %% tags=["hide-input", "remove-output"]
main_cell = analysis.cell_name(dataset, model)
main = analysis.topline(runs.select(**cell), weights=False, n_boot=n_boot, seed=seed)
n_main = int(main["n_replicas"].max()) if len(main) else 0  # the caption names the settings with fewer
if len(main):
    chart = charts.summary_chart(main)
else:
    chart = charts.missing_chart(f"no runs of {hardware}/{main_cell} in the store")
text = ("Left: standard deviation of top-1 test accuracy across replicas per setting, with its 95 % chi-square "
        "interval. Right: predictive churn, the mean share of test examples on which two replicas disagree, with "
        "its 95 % BCa bootstrap interval over replicas" + findings.few_replicas_note(main))
charts.glue_figure("claims", "summary", chart, text, n=n_main, hardware=hardware, cell=main_cell)
charts.glue_png("claims", "summary", chart)  # the introduction's copy: a page that is not a notebook

# %% tags=["remove-cell"]
# The headline numbers the introduction quotes beside the claims.
charts.glue_numbers({"main_hardware": hardware, "main_cell": main_cell, "main_replicas": str(n_main),
                     **findings.prose_values(main, {"acc_mean": "pct", "acc_std": "pct", "churn": "pct"}),
                     **findings.interval_values(main, {"acc_std": True, "churn": True})})
