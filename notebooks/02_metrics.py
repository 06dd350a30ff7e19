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
# (metrics)=
# # Measuring run-to-run variation
#
# Train $R$ replicas of one recipe under one setting ({ref}`noise-sources`) and evaluate each on
# the same $N$ test examples: the result is an $R \times N$ matrix of predicted classes
# $\hat y_{rn}$, beside the labels $y_n$ and the $R$ sets of final weights $\theta_r$. Every
# number the book reports about run-to-run variation is computed from these by
# `nnrandomness.metrics`, the metrics of {cite:t}`zhuang2022randomness` and a few more.
#
# This chapter defines each metric and computes it on an example small enough to check by eye:
# three replicas, six test examples. It ends with the places where the paper's released code
# computes something other than what it means to ({ref}`metrics-defects`), what that does to
# its numbers, and what we do instead.

# %%
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from myst_nb import glue

from nnrandomness import charts, metrics, models, noise

charts.enable()
CHAPTER = "metrics"  # figure names: charts.figure_name(CHAPTER, slug)

# %% [markdown]
# (metrics-example)=
# ## The example
#
# Three classes, six test examples (two per class), three replicas. Each row of `preds` is one
# replica's predictions; `groups` is an attribute of each example (think of CelebA's "male"),
# used for the subgroup rates below.

# %%
CLASSES = ["cat", "dog", "bird"]
labels = np.array([0, 0, 1, 1, 2, 2])
preds = np.array([
    [0, 0, 1, 2, 2, 1],  # replica 0
    [0, 1, 1, 2, 2, 0],  # replica 1
    [0, 0, 1, 1, 0, 1],  # replica 2
])
groups = np.array(["a", "a", "b", "b", "a", "b"])
R, N = preds.shape

REPLICAS = [f"replica {r}" for r in range(R)]  # row and column names of the tables
EXAMPLES = [f"example {n}" for n in range(N)]
names = [[CLASSES[c] for c in row] for row in (labels, *preds)]
pd.DataFrame([names[0], list(groups), *names[1:]], index=["label", "group", *REPLICAS],
             columns=EXAMPLES)

# %% tags=["hide-input", "remove-output"]
grid = pd.DataFrame(
    [
        {"replica": REPLICAS[r], "example": EXAMPLES[n], "prediction": CLASSES[preds[r, n]],
         "label": CLASSES[labels[n]], "correct": bool(preds[r, n] == labels[n])}
        for r in range(R) for n in range(N)
    ]
)
glue(charts.figure_name(CHAPTER, "example"), charts.prediction_grid(grid), display=True)

# %% [markdown]
# :::{glue:figure} fig-metrics-example
# :name: fig-metrics-example
# The example: the class each of three replicas predicts for each of six test examples (labels:
# cat, cat, dog, dog, bird, bird), blue where the prediction is correct.
# :::

# %% [markdown]
# (metrics-accuracy)=
# ## Accuracy and its spread
#
# Replica $r$'s top-1 accuracy, and its spread across replicas as the sample standard deviation
# (with $R - 1$ in the denominator):
#
# $$
# a_r = \frac{1}{N} \sum_{n=1}^{N} [\hat y_{rn} = y_n], \qquad
# s_a = \sqrt{\frac{1}{R-1} \sum_{r=1}^{R} (a_r - \bar a)^2}.
# $$

# %%
accuracy = metrics.accuracy(preds, labels)
summary = metrics.accuracy_summary(preds, labels)
glue("acc_values", ", ".join(f"{a:.3f}" for a in accuracy), display=False)
glue("acc_mean", summary["mean"], display=False)
glue("acc_std", summary["std"], display=False)
glue("acc_std_ddof0", float(np.std(accuracy)), display=False)
accuracy, summary

# %% [markdown]
# The replicas score {glue:text}`acc_values` (4, 3 and 4 of 6): mean {glue:text}`acc_mean:.3f`,
# standard deviation {glue:text}`acc_std:.4f`. (The released code uses numpy's default
# `np.std`, which divides by $R$ instead of $R - 1$: {glue:text}`acc_std_ddof0:.4f` here, a
# factor $\sqrt{(R-1)/R}$ smaller, about 5 % smaller at the paper's ten replicas. A convention
# more than a mistake, but the two are not comparable.)

# %% [markdown]
# (metrics-churn)=
# ## Predictive churn
#
# Two replicas with the same accuracy can still disagree on many examples. **Churn** is the
# fraction of test examples on which two replicas predict different classes, averaged over all
# $R(R-1)/2$ pairs:
#
# $$
# \mathrm{churn} = \frac{2}{R(R-1)} \sum_{i<j} \frac{1}{N} \sum_{n=1}^{N} [\hat y_{in} \neq \hat y_{jn}].
# $$
#
# Pair by pair:

# %%
pairwise = metrics.pairwise_churn(preds)
pd.DataFrame(pairwise, index=REPLICAS, columns=REPLICAS)

# %% [markdown]
# Looping over pairs costs $O(R^2 N)$. The package does not: if $c_{nk}$ replicas predict class
# $k$ for example $n$, then of the $R^2$ ordered pairs $(i, j)$, $\sum_k c_{nk}^2$ agree on
# example $n$, so $(R^2 - \sum_k c_{nk}^2)/2$ unordered pairs disagree there, and
#
# $$
# \mathrm{churn} = \frac{1}{N R } \sum_{n=1}^{N} \Bigl(R^2 - \sum_k c_{nk}^2\Bigr),
# $$
#
# which needs only the class counts: $O(RN)$ time.

# %%
counts = np.stack([np.bincount(preds[:, n], minlength=len(CLASSES)) for n in range(N)])
by_example = pd.DataFrame(counts, columns=[f"# {c}" for c in CLASSES], index=EXAMPLES)
by_example["disagreeing pairs"] = (R**2 - (counts**2).sum(axis=1)) // 2
churn = metrics.churn(preds)
glue("churn", churn, display=False)
glue("disagreeing_pairs", int(by_example["disagreeing pairs"].sum()), display=False)
glue("pairs_total", N * R * (R - 1) // 2, display=False)
by_example

# %% [markdown]
# {glue:text}`disagreeing_pairs` disagreeing (pair, example) cells out of
# {glue:text}`pairs_total`: churn = {glue:text}`churn:.4f`, the mean of the three off-diagonal
# entries above.
#
# A disagreement between two replicas is of one of two kinds: **one is right** and the other
# wrong, or **both are wrong** and differ. With $k_n$ replicas correct on example $n$,
# $k_n (R - k_n)$ pairs have exactly one correct member; they always disagree. The rest of the
# disagreeing pairs are both wrong:

# %%
split = metrics.churn_decomposition(preds, labels)
glue("churn_one_correct", split["one_correct"], display=False)
glue("churn_both_wrong", split["both_wrong"], display=False)
split

# %% [markdown]
# Of the churn of {glue:text}`churn:.4f`, {glue:text}`churn_one_correct:.4f` comes from pairs
# where one replica is right and {glue:text}`churn_both_wrong:.4f` from pairs that are both wrong
# (example 5, where replicas 0 and 2 say dog and replica 1 says cat). Against one reference
# replica, the one-correct part splits further into good churn (wrong to correct) and bad churn
# (correct to wrong):

# %%
versus_0 = metrics.churn_vs_reference(preds, labels, reference=0)
parts = ("correct_to_wrong", "wrong_to_correct", "wrong_to_other_wrong", "churn")
pd.DataFrame({key: versus_0[key] for key in parts},
             index=[f"replica {r} vs replica 0" for r in versus_0["replicas"]])

# %% [markdown]
# (metrics-l2)=
# ## Distance between weights
#
# Two replicas can also be compared in weight space: the Euclidean distance between their final
# weights, flattened into one vector each, averaged over pairs,
#
# $$
# d_{ij} = \lVert \theta_i - \theta_j \rVert_2, \qquad \bar d = \frac{2}{R(R-1)} \sum_{i<j} d_{ij}.
# $$
#
# With the replicas' weights as the rows of a matrix $X$ and its Gram matrix $G = X X^\top$,
# $d_{ij}^2 = G_{ii} + G_{jj} - 2 G_{ij}$: one matrix product gives every distance. (The package
# first subtracts the mean row, which leaves the distances unchanged and keeps the subtraction
# accurate when replicas are close.) BatchNorm's running statistics are buffers, not weights,
# and are left out by default. Three tiny "models" with a two-weight kernel, a bias and a
# BatchNorm buffer:

# %%
def tiny_model(kernel, bias, running_mean):
    return {"conv.weight": np.array(kernel), "conv.bias": np.array([bias]),
            "bn.running_mean": np.array([running_mean])}


weights = [tiny_model([0.0, 0.0], 0.0, 5.0),
           tiny_model([3.0, 4.0], 0.0, 7.0),
           tiny_model([0.0, 0.0], 12.0, 1.0)]
# the learnable weights, flattened (sorted names, as the package does)
X = np.stack([np.concatenate([w["conv.bias"], w["conv.weight"]]) for w in weights])
G = X @ X.T
by_hand = np.sqrt(np.diag(G)[:, None] + np.diag(G)[None, :] - 2 * G)
distances = metrics.pairwise_l2(weights)
with_buffers = metrics.mean_pairwise_l2(weights, include=lambda name: True)
glue("l2_mean", metrics.mean_pairwise_l2(weights), display=False)
glue("l2_mean_with_buffers", with_buffers, display=False)
glue("l2_matches", bool(np.allclose(by_hand, distances)), display=False)
G, distances

# %% [markdown]
# The distances are 5, 12 and 13 (a 3-4-5 and a 5-12-13 triangle), the same by hand from $G$ as
# from `metrics.pairwise_l2` ({glue:text}`l2_matches`), and their mean is
# {glue:text}`l2_mean:.1f`. Counting the buffers would give {glue:text}`l2_mean_with_buffers:.2f`.

# %% [markdown]
# (metrics-per-class)=
# ## Per-class accuracy
#
# Accuracy restricted to the examples of one true class $c$, per replica, and its spread:
#
# $$
# a_{rc} = \frac{\#\{n : y_n = c,\ \hat y_{rn} = c\}}{\#\{n : y_n = c\}}, \qquad
# s_c = \operatorname{std}_{r}(a_{rc}) \ \text{(ddof 1)}.
# $$

# %%
per_class = metrics.per_class_summary(preds, labels, num_classes=len(CLASSES))
per_class.insert(1, "name", CLASSES)
glue("per_class_std_max", float(per_class["std"].max()), display=False)
per_class

# %% [markdown]
# Every class's accuracy has a standard deviation of {glue:text}`per_class_std_max:.3f` across
# the three replicas, three times the spread of overall accuracy
# ({glue:text}`acc_std:.3f`): errors that move between classes cancel in the total. This is
# {cite:t}`zhuang2022randomness`'s main finding in miniature: top-1 accuracy hides how much
# individual classes move.

# %% [markdown]
# (metrics-subgroups)=
# ## Subgroup error rates
#
# For a binary target (CelebA's "blond hair"; here, "is it a bird?") and a group attribute, each
# replica has a confusion matrix per group, and two error rates:
#
# $$
# \mathrm{FPR} = \frac{\mathrm{FP}}{\mathrm{FP} + \mathrm{TN}}, \qquad
# \mathrm{FNR} = \frac{\mathrm{FN}}{\mathrm{FN} + \mathrm{TP}},
# $$
#
# the share of true negatives called positive, and of true positives missed. The spread of these
# across replicas, per group, is the subgroup metric of the paper.

# %%
is_bird = CLASSES.index("bird")
rates = metrics.subgroup_rates((preds == is_bird).astype(int), (labels == is_bird).astype(int),
                               groups, positive=1)
rates

# %%
summary_columns = ["group", "n", "fpr_mean", "fpr_std", "fnr_mean", "fnr_std"]
metrics.subgroup_summary(rates)[summary_columns]

# %% [markdown]
# (metrics-per-example)=
# ## Per-example instability
#
# Per test example: the share of replicas that get it right, the number of distinct classes
# predicted, and the share of replicas that predict the most common class:

# %%
instability = metrics.per_example_instability(preds, labels)
glue("n_unanimous", int((instability["n_distinct"] == 1).sum()), display=False)
instability

# %% [markdown]
# Only {glue:text}`n_unanimous` of the six examples get the same prediction from every replica.
# On real test sets most examples are unanimous, and the unstable ones concentrate on a small
# hard set.

# %% [markdown]
# (metrics-jordan)=
# ## How much of the spread is the test set?
#
# A test set is a finite sample. Even if every replica had the same *expected* accuracy over
# the data distribution, their accuracies on $N$ test examples would differ, and
# {cite:t}`jordan2024variance` finds that for standard training this accounts for most of the
# observed spread. If each example $n$ is answered correctly by a
# share $p_n$ of replicas, and errors on different examples are independent, the variance of
# test accuracy across replicas is
#
# $$
# \widehat{\operatorname{Var}}_{\text{test set}} = \frac{R}{R-1} \cdot \frac{1}{N^2} \sum_{n=1}^{N} p_n (1 - p_n),
# $$
#
# ($R/(R-1)$ makes each per-example variance unbiased). What the observed variance $s_a^2$ has
# beyond that is variance of the replicas' *distribution-wise* accuracy, estimated as
#
# $$
# \widehat{\operatorname{Var}}_{\text{distribution}} = \frac{N}{N-1}
# \Bigl(s_a^2 - \widehat{\operatorname{Var}}_{\text{test set}}\Bigr).
# $$
#
# Why $N/(N-1)$: for $N$ test examples drawn independently, the expected observed variance is
# the mean per-example variance over $N$ plus $(N-1)/N$ times the distribution variance (the $N$
# diagonal terms of the examples' covariance are per-example variances, the $N(N-1)$ others
# average to the distribution variance). The estimate is not clipped at zero: it can come out
# negative when its noise exceeds the quantity, and clipping would bias it upward, so a negative
# estimate is reported as such (the `negative` flag).

# %%
jordan = metrics.distribution_variance(preds, labels)
glue("jordan_observed", jordan["observed_var"], display=False)
glue("jordan_predicted", jordan["predicted_var"], display=False)
glue("jordan_distribution", jordan["distribution_var"], display=False)
glue("jordan_negative", "yes" if jordan["negative"] else "no", display=False)
jordan

# %% [markdown]
# Here $p_n = 1, \tfrac23, 1, \tfrac13, \tfrac23, 0$, so the sum is $3 \cdot \tfrac29$ and the
# test-set variance is $\tfrac32 \cdot \tfrac{2}{3} / 36 = $ {glue:text}`jordan_predicted:.4f`,
# more than the observed {glue:text}`jordan_observed:.4f`: the estimate of the distribution
# variance is $\tfrac65 (\tfrac{1}{108} - \tfrac{3}{108}) = -\tfrac{1}{45} = $
# {glue:text}`jordan_distribution:.4f`, negative (flag: {glue:text}`jordan_negative`). It is
# reported as computed: with three replicas the estimate is very noisy, and a negative value says
# that its noise exceeds the quantity. A
# setting whose accuracy spread is mostly test-set noise can still differ a lot in *which*
# examples it gets right: churn and per-class spreads measure that.

# %% [markdown]
# (metrics-uncertainty)=
# ## Uncertainty and comparing settings
#
# Every metric above is itself an estimate from $R$ replicas. The package gives percentile
# **bootstrap** intervals: resample the replicas with replacement (2,000 times here, from a fixed
# seed), recompute the statistic, take the 2.5 % and 97.5 % quantiles. For the mean accuracy of
# the example:

# %%
low, high = metrics.bootstrap_ci(accuracy, np.mean, n_boot=2000, level=0.95, seed=0)
glue("boot_low", low, display=False)
glue("boot_high", high, display=False)
low, high

# %% [markdown]
# The interval [{glue:text}`boot_low:.3f`, {glue:text}`boot_high:.3f`] spans the whole range of
# the three accuracies: with so few replicas a bootstrap says little, one reason the study trains
# many replicas per setting.
#
# To ask whether one setting's replicas spread more than another's, the package uses the
# **Brown-Forsythe** test (Levene's test with medians): with $z_{gi} = |x_{gi} - \operatorname{median}_g|$
# for value $i$ of setting $g$ ($n_g$ values, $n$ in all),
#
# $$
# W = (n - 2) \, \frac{\sum_g n_g (\bar z_g - \bar z)^2}{\sum_g \sum_i (z_{gi} - \bar z_g)^2},
# $$
#
# compared with an $F(1, n - 2)$ distribution. It compares spreads without assuming normality.
# Two made-up settings with four replicas each:

# %%
setting_a = np.array([0.90, 0.91, 0.92, 0.93])  # accuracies of four replicas, setting A
setting_b = np.array([0.85, 0.91, 0.95, 0.99])  # and of setting B
test = metrics.spread_test(setting_a, setting_b)
glue("bf_statistic", test["statistic"], display=False)
glue("bf_pvalue", test["pvalue"], display=False)
test

# %% [markdown]
# By hand: the medians are 0.915 and 0.93, so $z = (0.015, 0.005, 0.005, 0.015)$ with mean 0.01
# and $z = (0.08, 0.02, 0.02, 0.06)$ with mean 0.045; the overall mean is 0.0275, the numerator
# $4 \cdot 0.0175^2 \cdot 2 = 0.00245$, the denominator $0.0001 + 0.0027 = 0.0028$, and
# $W = 6 \cdot 0.00245 / 0.0028 = 5.25$, as computed ({glue:text}`bf_statistic:.2f`,
# $p$ = {glue:text}`bf_pvalue:.3f`).

# %% [markdown]
# (metrics-defects)=
# ## The original code's defects, and why our numbers differ
#
# The code released with {cite:t}`zhuang2022randomness` (TensorFlow 2.4) computes several
# metrics differently from their definitions. We do not repeat these; the cells below show each
# one on the example, so that our numbers can be set against the paper's with care.
#
# ### Churn that is agreement
#
# Its churn function returns `np.sum(a == b) / a.size`: the fraction of examples where two
# replicas **agree**, which is $1 - \mathrm{churn}$.

# %%
def released_churn(a, b):
    """The released code's pairwise "churn" (in fact agreement), for comparison only."""
    return np.sum(a == b) / a.size


pairs = [(i, j) for i in range(R) for j in range(R) if j > i]
theirs = float(np.mean([released_churn(preds[i], preds[j]) for i, j in pairs]))
glue("churn_released", theirs, display=False)
{"churn (ours)": churn, "released code": theirs, "1 - churn": 1 - churn}

# %% [markdown]
# On the example the released code reports {glue:text}`churn_released:.4f` where the churn is
# {glue:text}`churn:.4f`.
#
# ### The last epoch, by string sort
#
# Its training scripts save predictions and checkpoints after epoch indices 9, 49, 99, 149 and
# 199 as `pred9.txt`, `pred49.txt`, ... and its analysis takes the last file after
# `list.sort()`, which sorts names as strings:

# %%
saved = [f"pred{epoch}.txt" for epoch in range(200)  # the epochs its callback saves
         if epoch == 9 or (epoch + 1) % 50 == 0 or epoch == 199]
glue("sorted_last", sorted(saved)[-1], display=False)
sorted(saved), sorted(saved)[-1], max(saved, key=lambda name: int(name[4:-4]))

# %% [markdown]
# The last name is {glue:text}`sorted_last`: as strings, `"pred99.txt"` sorts after
# `"pred199.txt"` (the character `9` after `1`), so churn and weight
# distances are computed after epoch 100 of 200, while the accuracy spread comes from the last
# line of the training log, after epoch 200. The package has no file names to sort: `train_replica`
# returns the predictions and weights of its last epoch, and the run store keeps only those, with
# the per-epoch history keyed by an integer `epoch` column.
#
# ### A false-negative rate over the negatives
#
# Its FNR is `FN / (FP + TN)`, with the negatives' count as denominator; the rate of missed
# positives is FN/(FN + TP). On the subgroup example above:

# %%
fnr = rates[["replica", "group", "tp", "fp", "tn", "fn", "fnr"]]
fnr = fnr.rename(columns={"fnr": "FNR (ours)"})
fnr["FNR (released code)"] = fnr["fn"] / (fnr["fp"] + fnr["tn"])
group_a = fnr[fnr.group == "a"]
glue("fnr_ours_std_a", float(group_a["FNR (ours)"].std(ddof=1)), display=False)
glue("fnr_released_std_a", float(group_a["FNR (released code)"].std(ddof=1)), display=False)
fnr

# %% [markdown]
# Replica 2 misses the one bird of group a (FNR 1); the released formula says 0.5. The spread
# of FNR across replicas in group a, the quantity the paper plots, is
# {glue:text}`fnr_ours_std_a:.3f` by the definition and {glue:text}`fnr_released_std_a:.3f` by
# the released code. The released FNR is not bounded by 1 either (it divides by the wrong count).
#
# ### CIFAR-100 through a ten-class one-hot
#
# The SmallCNN script one-hot encodes every label with `tf.one_hot(label, 10)` and ends in a
# ten-unit layer, for CIFAR-100 too. TensorFlow maps an index outside `[0, 10)` to a row of
# zeros, so the 90 % of CIFAR-100 examples with labels 10 to 99 get an all-zero target, a
# cross-entropy of zero and no gradient. The package takes the number of classes from the data
# set, for the last layer and for the loss's one-hot, and PyTorch refuses an out-of-range label:

# %%
smallcnn_100 = models.build_model("smallcnn", num_classes=100, in_channels=3,
                                  generator=torch.Generator().manual_seed(0))
try:
    F.one_hot(torch.tensor([57]), num_classes=10)
    one_hot_error = "no error"
except RuntimeError as error:
    one_hot_error = f"{type(error).__name__}: {error}"
smallcnn_100.head[-1], one_hot_error

# %% [markdown]
# ### Overhead from nvprof's `Avg` column
#
# The determinism-cost figure runs training under `nvprof --csv` and estimates the total GPU
# time from the first row of the kernel summary (columns `Type, Time(%), Time, Calls, Avg, Min,
# Max, Name`) as time / share. It reads column 4, `Avg` (time per call), where it needs `Time`
# (total over all calls), so each run's estimate is divided by the call count of whichever
# kernel tops its profile, and the deterministic / default ratio is off by the ratio of those
# counts. With made-up numbers for two runs:

# %%
nvprof_top_rows = pd.DataFrame(
    {
        "Time(%)": [40.0, 50.0],  # share of GPU time of the top kernel
        "Time (ms)": [400.0, 1000.0],  # its total time over all calls
        "Calls": [100, 50],
    },
    index=["default", "deterministic"],
)
nvprof_top_rows["Avg (ms)"] = nvprof_top_rows["Time (ms)"] / nvprof_top_rows["Calls"]
total_right = nvprof_top_rows["Time (ms)"] / (nvprof_top_rows["Time(%)"] / 100)
total_released = nvprof_top_rows["Avg (ms)"] / (nvprof_top_rows["Time(%)"] / 100)
ratio_right = total_right["deterministic"] / total_right["default"]
ratio_released = total_released["deterministic"] / total_released["default"]
glue("nvprof_ratio_right", float(ratio_right), display=False)
glue("nvprof_ratio_released", float(ratio_released), display=False)
nvprof_top_rows.assign(**{"total from Time": total_right, "total from Avg": total_released})

# %% [markdown]
# Here deterministic training takes {glue:text}`nvprof_ratio_right:.1f` times as long; the
# released parser reports {glue:text}`nvprof_ratio_released:.1f`. Our determinism-cost study
# ({ref}`determinism-cost`) parses no profiler output: it times whole training steps (CUDA events
# on a GPU), interleaving the configurations, and reports the median.
#
# ### Identical initial kernels
#
# A seeded Keras initialiser is stateless: called twice with the same seed, it returns the same
# values. In IMPL and CONTROL the released code initialises every layer with the same seed, so
# all kernels of the same shape start identical (in ResNet-18, most of the 3x3 convolutions): a
# difference between the settings with and without fixed seeds that has nothing to do with
# tooling. The package initialises every
# layer from one generator, consumed layer after layer, so each layer gets its own draws. Three
# 64-to-64 3x3 kernels of ResNet-18:

# %%
resnet = models.build_model("resnet18", num_classes=10, in_channels=3,
                            generator=torch.Generator().manual_seed(0))
kernels = {
    "block 0 conv1": resnet.layers[0].conv1.weight,
    "block 0 conv2": resnet.layers[0].conv2.weight,
    "block 1 conv1": resnet.layers[1].conv1.weight,
}
# What a stateless seeded initialiser does: the same seed, hence the same draws, for every layer.
stateless = {
    name: torch.nn.init.xavier_uniform_(torch.empty_like(k), generator=torch.Generator().manual_seed(0))
    for name, k in kernels.items()
}
names = list(kernels)
pd.DataFrame(
    [
        {"pair": f"{a} / {b}", "shape": tuple(kernels[a].shape),
         "identical (ours)": torch.equal(kernels[a], kernels[b]),
         "identical (stateless seeded)": torch.equal(stateless[a], stateless[b])}
        for i, a in enumerate(names) for b in names[i + 1:]
    ]
)

# %% [markdown]
# ### Augmentation seeds fixed everywhere, CONTROL never checked
#
# The released scripts seed the augmentation the same way in all four settings, so
# augmentation is never a source of variation, even in ALGO+IMPL. The package seeds the `aug`
# stream per replica wherever the setting varies it (ALGO+IMPL, ALGO and the AUG preset):

# %%
def aug_seed(setting_name, replica):
    return noise.replica_seeds(0, replica, noise.get_setting(setting_name))["aug"]


{name: aug_seed(name, 0) != aug_seed(name, 1)  # does replica 1 get other augmentations?
 for name in ("ALGO+IMPL", "ALGO", "IMPL", "CONTROL", "AUG")}

# %% [markdown]
# And the released code never checks that CONTROL replicas are identical (its hashing helpers
# are commented out), so a control that is not one would go unnoticed. `run_cell` hashes the
# weights and predictions of every CONTROL replica and raises `DeterminismViolation` when they
# differ.
#
# ### Summary
#
# | in the released code | effect on its numbers | here | tests |
# |---|---|---|---|
# | churn returns agreement, `np.sum(a == b) / a.size` | reported "churn" is $1 - \mathrm{churn}$ | `metrics.churn` counts disagreements | `test_metrics.py` |
# | last prediction / checkpoint file by string sort | churn and L2 after epoch 100 of 200; accuracy after 200 | `train_replica` returns the last epoch's predictions and weights; history keyed by integer epoch | `test_train.py` |
# | FNR = FN / (FP + TN) | not the miss rate; not bounded by 1 | FN / (FN + TP) | `test_metrics.py` |
# | SmallCNN one-hot to 10 classes on CIFAR-100 | labels 10-99 get zero targets; ten outputs | classes from the data set, for the last layer and the loss | `test_data.py`, this page |
# | overhead parser reads nvprof's `Avg`, not `Time` | each total divided by its top kernel's call count | whole training steps timed, median over interleaved blocks | `test_overhead.py` |
# | stateless seeded initialisers | same-shaped kernels start identical in IMPL and CONTROL | one generator consumed layer by layer | `test_models.py` |
# | augmentation seeds fixed in every setting | augmentation never varies | `aug` stream seeded per replica where varied | `test_noise.py`, `test_train.py` |
# | CONTROL's bit-identity never checked | a broken control goes unnoticed | `run_cell` compares hashes, raises `DeterminismViolation` | `test_cell.py` |
# | `np.std` (ddof 0) across replicas | spreads about 5 % smaller at ten replicas (a convention) | ddof 1 everywhere | `test_metrics.py` |
#
# The tests by name, all under `tests/`:
#
# - churn: `test_metrics.py::test_churn_hand`, `test_pairwise_churn_hand`,
#   `test_churn_matches_pairwise_on_random_data`;
# - last epoch: `test_train.py::test_result_shapes_and_history`;
# - FNR: `test_metrics.py::test_subgroup_rates_hand_confusion`, `test_fnr_differs_from_paper_bug`;
# - CIFAR-100 classes: `test_data.py::test_cifar100_fine_and_coarse`;
# - overhead: `test_overhead.py::test_overhead_formula_on_hand_made_timings`,
#   `test_cpu_steps_are_timed_one_by_one_with_perf_counter`,
#   `test_blocks_are_interleaved_between_configurations`;
# - initial kernels: `test_models.py::test_same_shaped_kernels_get_their_own_draws`;
# - augmentation seeds: `test_noise.py::test_seeds_vary_only_for_varied_sources`,
#   `test_train.py::test_single_source_presets_vary_their_source`;
# - CONTROL: `test_cell.py::test_control_replicas_are_bit_identical`,
#   `test_control_cell_with_differing_replicas_fails_loudly`;
# - ddof: `test_metrics.py::test_accuracy_summary_hand`.
