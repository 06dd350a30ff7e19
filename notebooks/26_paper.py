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
# (paper)=
# # Side by side with the paper
#
# What {cite:t}`zhuang2022randomness` report, next to what this book measures with the same
# definitions. Each of the paper's values is quoted from `data/paper_results.csv`, one row per
# value with its citation; where the paper states a result in words, the row quotes the words.
# Ours are computed here from the run store and the overhead sweeps, with n and a 95 % interval
# where the quantity has one. Each row says how far the two can be compared: *GPU only* where the
# paper's number comes from non-deterministic GPU kernels that the CPU default cannot reproduce
# (no CPU number is set beside it), *comparable in kind only* where the quantity is the same but
# the model, the data or the hardware differ.

# %%
from IPython.display import Markdown

from nnrandomness import PAPER_SETTINGS, analysis, charts, findings, overhead

charts.enable()

# %% tags=["parameters"]
runs_root = "../data/runs"  # the run store, relative to notebooks/
overhead_root = ".."  # root of the overhead store (<root>/data/overhead/<hardware>/), relative to notebooks/
paper_results = "../data/paper_results.csv"  # the paper's values, one cited row each
hardware = "cpu-1t"  # hardware label of the main cell
dataset = "mnist1d"  # dataset of the main cell
model = "cnn1d"  # model of the main cell
settings = list(PAPER_SETTINGS)  # the settings compared (the paper's four)
n_boot = 2000  # bootstrap resamples per confidence interval
seed = 0  # bootstrap seed: fixed, so re-running gives the same numbers

# %% [markdown]
# The paper's values, checked (known quantities, settings and units; a number or a quoted claim;
# a source on every row), and the replicas of the main cell.

# %%
# A name the store lacks stops here, listing what it holds (a typo would otherwise show empty tables).
analysis.check_selection(runs_root, hardware=hardware, dataset=dataset, model=model, setting=settings)
paper = findings.read_paper_results(paper_results)
runs = analysis.load_settings(runs_root, settings, hardware=hardware, dataset=dataset, model=model)
gaps = analysis.missing(runs, hardware=hardware, dataset=dataset, model=model, settings=settings)
Markdown(analysis.missing_note(gaps, runs_root)) if gaps else None

# %% [markdown]
# Ours: per setting of the main cell, the spread of top-1 accuracy (chi-square interval), churn
# and L2 (BCa intervals over replicas) and the largest per-class spread; per overhead sweep, the
# overhead of deterministic training (`det_full`: deterministic algorithms, cuDNN deterministic,
# autotuning off) over the models it timed, with the interquartile range of the slowest model.

# %%
top = analysis.topline(runs, n_boot=n_boot, seed=seed)
spread = analysis.per_class_spread(runs)
sweeps = overhead.read_all(overhead.store_root(repository=overhead_root))
ours = findings.paper_ours(top, spread, sweeps)
findings.ours_table(ours)

# %% [markdown]
# ## The table
#
# {glue:text}`paper_rows`

# %%
side = findings.paper_comparison(paper, ours)
side

# %% tags=["remove-cell"]
kinds = side["comparison"].str.split(":").str[0].value_counts()
counts = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
algo = top[top["setting"] == "ALGO"]
ratio = spread.loc[spread["setting"] == "ALGO", "ratio_max"]
span = ours[(ours["quantity"] == "determinism_overhead_range") & (ours["setting"] == "")]
charts.glue_numbers({
    "paper_rows": f"{len(side)} rows of the paper's: {counts}.",
    "paper_algo_acc_std": findings.ci_text(algo, "acc_std").iloc[0] if len(algo) else "n/a",
    "paper_algo_churn": findings.ci_text(algo, "churn").iloc[0] if len(algo) else "n/a",
    "paper_algo_n": str(int(algo["n_replicas"].iloc[0])) if len(algo) else "0",
    "paper_cell": f"{hardware}/{analysis.cell_name(dataset, model)}",
    "paper_class_ratio": findings.as_text(ratio.iloc[0] if len(ratio) else None, "ratio"),
    "paper_overhead": "; ".join(f"{label}: {text}" for label, text in zip(span["hardware"], span["text"])) or "none",
})

# %% [markdown]
# ## What the comparison supports
#
# - **Top-1 spread and churn, side by side.** On {glue:text}`paper_cell`
#   under {term}`ALGO` ({glue:text}`paper_algo_n` replicas), the standard deviation of top-1
#   accuracy is {glue:text}`paper_algo_acc_std` while two replicas disagree on
#   {glue:text}`paper_algo_churn` of the test examples ({term}`churn`). That agrees in kind with the
#   paper's statement about its GPU runs; it says nothing about the size of the paper's numbers,
#   which come from other models, data and hardware.
# - **Parts of the data distribution.** Under ALGO the largest per-class spread is
#   {glue:text}`paper_class_ratio` times the top-1 spread. A per-class accuracy rests on one
#   class's share of the test set, so part of its spread is sampling noise alone: {ref}`per-class`
#   and {ref}`subgroups` test it against the {term}`independent-examples null` before calling it
#   sensitivity.
# - **Tooling noise (IMPL).** The CPU default cannot show it: at a fixed thread count its
#   {term}`IMPL` replicas are bit-identical to {term}`CONTROL` ({ref}`topline`). Every
#   row of the paper that needs non-deterministic GPU kernels reads *GPU only*; the same code fills
#   it in when the store holds runs on that GPU (a hardware label such as `cuda-tesla-v100`).
# - **The cost of determinism.** The paper's maxima (746 %, 241 %, 196 %) are GPU figures, on
#   ImageNet-sized inputs. The sweeps here time small inputs; deterministic training costs
#   {glue:text}`paper_overhead` (per model: the median step time against the non-deterministic
#   one). {ref}`determinism-cost` shows them with their timing noise, which is of the same order.
#
# The paper's per-setting tables (standard deviation, churn and L2 per model and dataset) are not
# transcribed into `data/paper_results.csv`: it holds only values checked against the paper's text.
# A row added there with its citation appears in the table above, beside ours, on re-execution.
