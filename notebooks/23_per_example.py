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
# (per-example)=
# # Per-example instability
#
# Churn counts disagreements; this chapter looks at the examples behind them. For every test
# example: how many replicas get it right, and how many different classes they predict. Then the
# most unstable examples themselves, as images with the replicas' votes; good and bad churn
# (examples that go from right to wrong and back); and how much of the variance of test accuracy
# is the noise of a finite test set, after {cite:t}`jordan2024variance`.

# %%
import pandas as pd
from IPython.display import Markdown

from nnrandomness import PAPER_SETTINGS, analysis, charts, findings, load_dataset, store

charts.enable()

# %% tags=["parameters"]
runs_root = "../data/runs"  # the run store, relative to notebooks/
hardware = "cpu-1t"  # hardware label of the cell
dataset = "digits"  # dataset of the cell (its test images are drawn)
model = "smallcnn"  # model of the cell
setting = "ALGO"  # the setting whose most unstable examples are drawn
top_k = 12  # how many examples to draw

# %%
runs = store.load_runs(runs_root, hardware=hardware, dataset=dataset, model=model)
examples = analysis.per_example(runs)
summary = analysis.instability_summary(examples)
gaps = analysis.missing(runs, hardware=hardware, dataset=dataset, model=model, settings=PAPER_SETTINGS)
Markdown(analysis.missing_note(gaps, runs_root)) if gaps else None

# %% [markdown]
# Per setting: the test examples on which the replicas do not all agree ("flip"), those every
# replica gets wrong, and those some replicas get right and others wrong.

# %%
pd.DataFrame({
    "setting": summary["setting"], "replicas": summary["n_replicas"], "test examples": summary["n_examples"],
    "flip": summary["n_flip"], "flip (share)": summary["share_flip"].map(findings.pct),
    "always wrong": summary["n_always_wrong"], "sometimes wrong": summary["n_sometimes_wrong"],
}).set_index("setting")

# %% tags=["hide-input", "remove-output"]
main_cell = analysis.cell_name(dataset, model)
n = int(summary["n_replicas"].min()) if len(summary) else 0
columns = {"share_flip": "pct", "n_flip": "int", "n_examples": "int", "n_sometimes_wrong": "int",
           "n_always_wrong": "int"}
charts.glue_numbers(findings.prose_values(summary, columns))

# %% [markdown]
# ## How many replicas get each example right
#
# Under ALGO the replicas disagree on {glue:text}`algo_n_flip` of the {glue:text}`algo_n_examples`
# test examples ({glue:text}`algo_share_flip`); {glue:text}`algo_n_always_wrong` are wrong in every
# replica. The figure shows the rest of the picture: the examples every replica gets right sit
# at the right end, and the churn between two replicas comes from the examples in between, right
# in some replicas and wrong in others.
#
# :::{glue:figure} fig-per-example-right-counts
# :name: fig-per-example-right-counts
#
# {glue:text}`fig-per-example-right-counts-caption`
# :::

# %% tags=["hide-input", "remove-output"]
chart = (charts.right_counts(examples, summary) if len(examples)
         else charts.missing_chart(f"no runs of {hardware}/{main_cell} in the store"))
charts.glue_figure("per-example", "right-counts", chart,
                   "Number of test examples (symmetric log scale) by how many replicas of a setting classify them "
                   "correctly; click a setting in the legend to bring it forward", n=n, hardware=hardware,
                   cell=main_cell)

# %% [markdown]
# ## The most unstable examples
#
# The examples on which the replicas of the setting chosen in the parameters agree least (the
# smallest share predicting the most common class, then the most distinct classes), drawn as
# the model sees them, with the replicas' votes below.
#
# :::{glue:figure} fig-per-example-unstable
# :name: fig-per-example-unstable
#
# {glue:text}`fig-per-example-unstable-caption`
# :::

# %% tags=["hide-input", "remove-output"]
chosen = analysis.unstable_examples(examples, setting, top_k)
votes = analysis.examples_votes(runs.select(setting=setting).predictions, chosen["example"])
try:  # a dataset that is not on this machine: say so
    images = load_dataset(dataset).x_test.numpy() if len(chosen) else None
    reason = f"no {setting} replicas disagree on any test example"
except (FileNotFoundError, ValueError) as e:
    images, reason = None, str(e).splitlines()[0]
chart = charts.unstable_examples(chosen, images, votes, setting) if images is not None else charts.missing_chart(reason)
charts.glue_figure("per-example", "unstable", chart,
                   f"Top: the test examples on which the {setting} replicas agree least, as 8x8 images, with their "
                   f"true label. Bottom: how many replicas predict each class (the number in a bar), right in blue, "
                   f"wrong in orange", n=int(chosen["n_replicas"].max()) if len(chosen) else 0, hardware=hardware,
                   cell=main_cell)

# %% [markdown]
# ## Good and bad churn
#
# Against one reference replica (replica 0), the share of test examples that another replica of
# the same setting gets wrong where the reference is right (bad churn), right where the reference
# is wrong (good churn), or wrong in a different way; averaged over the other replicas. Bad minus
# good churn is exactly how much less accurate the other replicas are than the reference, so
# where the two are large and nearly equal the replicas trade errors rather than make more.

# %%
flips = analysis.churn_flips(runs)
pd.DataFrame({"setting": flips["setting"], "replicas": flips["n_replicas"],
              "right -> wrong": flips["correct_to_wrong"].map(findings.pct),
              "wrong -> right": flips["wrong_to_correct"].map(findings.pct),
              "wrong -> other wrong": flips["wrong_to_other_wrong"].map(findings.pct),
              "churn vs replica 0": flips["churn"].map(findings.pct)}).set_index("setting")

# %% tags=["hide-input", "remove-output"]
dv = analysis.distribution_variance(runs)
columns = {"observed_std": "pct", "predicted_std": "pct", "distribution_std": "pct", "ratio": "ratio"}
charts.glue_numbers(findings.prose_values(dv, columns))

# %% [markdown]
# ## Test-set noise or different models?
#
# Two replicas can have different test accuracies for two reasons: they are different models of
# the data distribution (one is truly better), or they are equally good and the finite test set
# happens to favour one. {cite:t}`jordan2024variance` separates the two. If every test example
# were an independent coin flip, right with the share of replicas that get it right, test
# accuracy would vary by the *predicted* amount; what the replicas show beyond it is
# distribution-wise variance. Under ALGO the observed standard deviation of accuracy is
# {glue:text}`algo_observed_std` against {glue:text}`algo_predicted_std` predicted, a ratio of
# variances of {glue:text}`algo_ratio`; the distribution-wise part is
# {glue:text}`algo_distribution_std` (as a standard deviation). A ratio near 1 says the replicas
# are equally good models that differ in which examples they happen to get right; a ratio well
# above 1 says their accuracies on the whole distribution differ too.
#
# :::{glue:figure} fig-per-example-variance
# :name: fig-per-example-variance
#
# {glue:text}`fig-per-example-variance-caption`
# :::

# %% tags=["hide-input", "remove-output"]
chart = (charts.variance_chart(dv) if len(dv)
         else charts.missing_chart(f"no runs of {hardware}/{main_cell} in the store"))
charts.glue_figure("per-example", "variance", chart,
                   "Standard deviation of test accuracy across replicas (circles) and the standard deviation "
                   "independent per-example errors would give (diamonds, Jordan's estimator), per setting",
                   n=n, hardware=hardware, cell=main_cell)
