"""The cost of determinism: training-step time under named backend configurations.

One module per concern:

* `timing`: the configurations (`CONFIGURATIONS`, each a named set of backend flags), the
  workload of one model (`Workload`) and how a step is timed (`measure`: interleaved blocks, each
  in a fresh process (`run_fresh`, `time_block`) with its own untimed warm-up, CUDA events or
  perf_counter, kernel time from torch.profiler (`kernel_time`), peak memory, median and IQR, the
  overhead % against the baseline);
* `sweeps`: a plan (`Plan`, `load_plan` of plans/overhead.yaml) and the `sweep` of its workloads;
* `results`: the overhead store, ``<root>/overhead/<hardware>/results.parquet`` and its
  ``manifest.json`` written last (`write_results`, `read_results`; `DEFAULT_ROOT` is where the
  CLI writes and the cost chapter reads);
* `report`: what the cost chapter shows, computed from the stored rows (tables, headline
  numbers, captions), tested here rather than in the chapter;
* `run`: the ``nnrandomness overhead`` CLI and the papermill execution of the overhead notebook.

The names below are the public surface (``from nnrandomness import overhead``; ``overhead.X``).
"""

from .report import (
    across_hardware,
    baseline_rows,
    cost_numbers,
    divergence_caption,
    divergence_numbers,
    documented_ops,
    flipped_table,
    hardware_note,
    kernel_size_caption,
    kernel_size_numbers,
    kernel_size_rows,
    measures_table,
    method_note,
    model_order,
    overhead_caption,
    overhead_table,
    timed_rows,
    unsupported_ops,
)
from .results import (
    DEFAULT_ROOT,
    MANIFEST,
    RESULTS,
    hardware_labels,
    read_all,
    read_results,
    results_dir,
    store_root,
    write_results,
)
from .run import (
    NOTEBOOK,
    NOTEBOOK_PARAMETERS,
    add_arguments,
    executed_path,
    main,
    notebook_parameters,
    notebook_plan,
    notebook_plan_from,
    plan_from_args,
    run_notebook,
)
from .sweeps import Plan, load_plan, sweep
from .timing import (
    ADDED_COLUMNS,
    BASELINE,
    CONFIGURATIONS,
    ROW_COLUMNS,
    TIMED_DEVICE_TYPES,
    Configuration,
    Workload,
    apply_configuration,
    check_configuration,
    compile_note,
    kernel_time,
    measure,
    model_changes,
    overhead_pct,
    rows_from_results,
    run_fresh,
    summarize,
    time_block,
    time_configurations,
    unsupported_op,
)

__all__ = [
    "ADDED_COLUMNS",
    "BASELINE",
    "CONFIGURATIONS",
    "DEFAULT_ROOT",
    "MANIFEST",
    "NOTEBOOK",
    "NOTEBOOK_PARAMETERS",
    "RESULTS",
    "ROW_COLUMNS",
    "TIMED_DEVICE_TYPES",
    "Configuration",
    "Plan",
    "Workload",
    "across_hardware",
    "add_arguments",
    "apply_configuration",
    "baseline_rows",
    "check_configuration",
    "compile_note",
    "cost_numbers",
    "divergence_caption",
    "divergence_numbers",
    "documented_ops",
    "executed_path",
    "flipped_table",
    "hardware_labels",
    "hardware_note",
    "kernel_size_caption",
    "kernel_size_numbers",
    "kernel_size_rows",
    "kernel_time",
    "load_plan",
    "main",
    "measure",
    "measures_table",
    "method_note",
    "model_changes",
    "model_order",
    "notebook_parameters",
    "notebook_plan",
    "notebook_plan_from",
    "overhead_caption",
    "overhead_pct",
    "overhead_table",
    "plan_from_args",
    "read_all",
    "read_results",
    "results_dir",
    "rows_from_results",
    "run_fresh",
    "run_notebook",
    "store_root",
    "summarize",
    "sweep",
    "time_block",
    "time_configurations",
    "timed_rows",
    "unsupported_op",
    "unsupported_ops",
    "write_results",
]
