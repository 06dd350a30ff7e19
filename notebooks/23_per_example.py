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
# is the noise of a finite test set, after {cite:t}`jordan2024variance`, set beside a direct
# measurement of the variance over the data distribution on further test sets.

# %%
import pandas as pd
from IPython.display import Markdown

from nnrandomness import PAPER_SETTINGS, analysis, charts, findings, load_dataset, store

charts.enable()

# %% tags=["parameters"]
runs_root = "../data/runs"  # the run store, relative to notebooks/
hardware = "cpu-1t"  # hardware label of the cell
dataset = "mnist1d"  # dataset of the cell (its test examples are drawn)
model = "cnn1d"  # model of the cell
setting = "ALGO"  # the setting whose most unstable examples are drawn
top_k = 12  # how many examples to draw

# %%
# A name the store lacks stops here, listing what it holds (a typo would otherwise show empty tables).
analysis.check_selection(runs_root, hardware=hardware, dataset=dataset, model=model, setting=setting)
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

# %% tags=["remove-cell"]
main_cell = analysis.cell_name(dataset, model)
# the settings that spread (3 or more replicas); CONTROL and IMPL need only 2: they are bit-identical
n = int(summary["n_replicas"][summary["n_replicas"] >= 3].min()) if (summary["n_replicas"] >= 3).any() else 0
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
# the model sees them, with the replicas' votes beside them.
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
    inputs = load_dataset(dataset).x_test.numpy() if len(chosen) else None
    reason = f"no {setting} replicas disagree on any test example"
except (FileNotFoundError, ValueError) as e:
    inputs, reason = None, str(e).splitlines()[0]
votes_text = "how many replicas predict each class"
if inputs is None:
    chart, drawn = charts.missing_chart(reason), f"test examples, and {votes_text}"
elif inputs.ndim == 3:  # 1D signals (N, C, L)
    chart = charts.unstable_signals(chosen, inputs, votes, setting)
    drawn = f"signals, with their true label, and (right) {votes_text}, the true class outlined"
else:
    chart = charts.unstable_examples(chosen, inputs, votes, setting)
    drawn = (f"{inputs.shape[2]}x{inputs.shape[3]} images, with their true label, and (below) {votes_text}, "
             "right in blue, wrong in orange")
charts.glue_figure("per-example", "unstable", chart,
                   f"The test examples on which the {setting} replicas agree least, as {drawn}",
                   n=int(chosen["n_replicas"].max()) if len(chosen) else 0, hardware=hardware, cell=main_cell)

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

# %% tags=["remove-cell"]
dv = analysis.distribution_variance(runs)
columns = {"observed_std": "pct", "predicted_std": "pct", "distribution_std": "pct", "ratio": "ratio",
           "negative": "flag"}
charts.glue_numbers(findings.prose_values(dv, columns))

# %% [markdown]
# ## Test-set noise or different models?
#
# Two replicas can have different test accuracies for two reasons: they are different models of
# the data distribution (one is truly better), or they are equally good and the finite test set
# happens to favour one. {cite:t}`jordan2024variance` separates the two. If every test example
# were an independent coin flip, right with the share of replicas that get it right, test
# accuracy would vary by the *predicted* amount; what the replicas show beyond it, times
# $N/(N-1)$, estimates the distribution-wise variance ({ref}`metrics-jordan`). Under ALGO the
# observed standard deviation of accuracy is {glue:text}`algo_observed_std` against
# {glue:text}`algo_predicted_std` predicted, a ratio of variances of {glue:text}`algo_ratio`; the
# distribution-wise part is {glue:text}`algo_distribution_std` as a signed standard deviation
# (negative estimate: {glue:text}`algo_negative`; a negative estimate is reported as computed,
# not clipped to zero, since clipping would bias the estimator upward).
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

# %% [markdown]
# ## Jordan's estimate against a direct measurement
#
# Jordan's estimate needs only the one test set, but rests on a model of it. MNIST-1D is
# generated, so every replica was also evaluated on further test sets drawn from the same
# distribution with other generator seeds. Two different sets share no example, so the
# covariance across replicas of the accuracies on two different sets is exactly the variance of
# accuracy over the distribution: the direct measurement is the mean of those covariances. Per
# setting, both estimates of the same variance on the same replicas, with 95 % intervals (BCa over
# replicas), their difference with its interval from a paired bootstrap over replicas, and the
# p-value of "they estimate the same variance", adjusted with Holm across the settings.

# %%
variance = analysis.variance_direct(runs)
vtests = analysis.variance_tests(runs)
vclaims = findings.claims_from_tests(vtests)
by_name = dict(zip(vtests["name"], vclaims))
difference = vtests.set_index("name")
rows, by_setting = [], {}
for _, v in variance.iterrows():
    name = f"jordan_vs_direct_{v['setting'].lower().replace('+', '_')}_{v['dataset']}_{v['model']}"
    d = difference.loc[name] if name in difference.index else None
    if name in by_name:
        by_setting[v["setting"]] = by_name[name]
    rows.append({
        "setting": v["setting"], "replicas": v["n_replicas"], "extra test sets": v["n_sets"],
        "Jordan": findings.as_text(v["jordan_var"], "e"),
        "Jordan 95 % CI": f"{findings.as_text(v['jordan_lo'], 'e')} to {findings.as_text(v['jordan_hi'], 'e')}",
        "negative": findings.as_text(v["jordan_negative"], "flag"),
        "direct": findings.as_text(v["direct_var"], "e"),
        "direct 95 % CI": f"{findings.as_text(v['direct_lo'], 'e')} to {findings.as_text(v['direct_hi'], 'e')}",
        "difference": findings.as_text(None if d is None else d["effect"], "e"),
        "p (Holm)": findings.p_text(float("nan") if d is None else d["p_adjusted"]),
        "verdict": by_name[name].verdict if name in by_name else "n/a",
    })
pd.DataFrame(rows, columns=["setting", "replicas", "extra test sets", "Jordan", "Jordan 95 % CI", "negative", "direct",
                            "direct 95 % CI", "difference", "p (Holm)", "verdict"]).set_index("setting")

# %% tags=["remove-cell"]
charts.glue_numbers({"claim_jordan_algo": findings.word(by_setting["ALGO"]) if "ALGO" in by_setting else
                     f"No ALGO runs of {hardware}/{main_cell} with 3 or more replicas and extra test sets"})

# %% [markdown]
# Under ALGO: {glue:text}`claim_jordan_algo`. Every setting, worded from its test:

# %%
Markdown("\n".join(f"- {setting}: {findings.word(c)}." for setting, c in by_setting.items())
         or "No setting has 3 or more replicas with extra test sets.")

# %% [markdown]
# :::{glue:figure} fig-per-example-jordan-direct
# :name: fig-per-example-jordan-direct
#
# {glue:text}`fig-per-example-jordan-direct-caption`
# :::

# %% tags=["hide-input", "remove-output"]
shown = variance[variance["n_sets"] > 0]
text = ("Variance of accuracy over the data distribution, per setting: Jordan's estimate from the main test set and "
        "the direct measurement on the extra test sets, each with its 95 % interval (BCa over replicas), shown as "
        "signed standard deviations (sign times the square root)")
if len(shown):
    charts.glue_figure("per-example", "jordan-direct", charts.jordan_direct_chart(shown), text,
                       n=int(shown["n_replicas"].min()), hardware=hardware, cell=main_cell)
else:
    charts.glue_figure("per-example", "jordan-direct", charts.missing_chart(f"no {hardware}/{main_cell} replicas "
                       "with extra test sets"), text, n=0, hardware=hardware, cell=main_cell)
