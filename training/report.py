"""The evaluation report of one training run: report.json, report.md and PNG plots."""

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import orjson

from training.evaluate import CUTOFFS

PIPELINE_PLOT, LOSS_PLOT = "pipelines.png", "training.png"
HEADLINE = ("hitrate@10", "ndcg@10")


def write_report(directory: Path, report: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    (directory / "report.md").write_text(markdown(report))
    if report["splits"]:
        _plot_pipelines(report["splits"], directory / PIPELINE_PLOT)
    _plot_training(report["training"], directory / LOSS_PLOT)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _with_error(metrics: dict[str, float], key: str) -> str:
    """'value ± standard error' where the error is known."""
    error = metrics.get(f"{key}_se", math.nan)
    return _cell(metrics[key]) + ("" if math.isnan(error) else f" ± {error:.4f}")


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows])


def _interval(bounds: list[float] | None, signed: bool = False) -> str:
    if bounds is None:
        return ""
    form = "+.4f" if signed else ".4f"
    return f"[{bounds[0]:{form}}, {bounds[1]:{form}}]"


def _intervals_table(intervals: dict[str, dict[str, list[float]]]) -> list[str]:
    """95 % bootstrap intervals over users (test): each pipeline's, and the served one's lead over it."""
    return [
        "95 % bootstrap intervals over users (each drawn with all of their queries), test queries; "
        "served minus a pipeline is paired query by query:",
        table(
            ["pipeline (test)", "NDCG@10", "HR@10", "served minus it, NDCG@10", "served minus it, HR@10"],
            [
                [
                    name,
                    _interval(bounds["ndcg@10"]),
                    _interval(bounds["hitrate@10"]),
                    _interval(bounds.get("minus_ndcg@10"), signed=True),
                    _interval(bounds.get("minus_hitrate@10"), signed=True),
                ]
                for name, bounds in intervals.items()
            ],
        ),
    ]


def split_section(name: str, split: dict[str, Any]) -> list[str]:
    metric_names = [f"{metric}@{k}" for k in CUTOFFS for metric in ("hitrate", "recall", "ndcg")]
    test, validation = split["test"], split["validation"]
    parts = [
        f"## The {name} split",
        f"{split['train_rows']} training rows, {split['ranker_rows']} ranker rows; "
        f"{validation['queries']} validation and {test['queries']} test queries"
        + (
            f"; EASE's lambda {split['ease_lambda']}, chosen on validation NDCG@10 "
            + ", ".join(f"{lam}: {ndcg:.4f}" for lam, ndcg in split.get("ease_validation_ndcg@10", {}).items())
            + "; co-occurrence weighting chosen on validation: "
            + ", ".join(f"{name} {value:g}" for name, value in split.get("cooccurrence_weighting", {}).items())
            + "."
            if "ease_lambda" in split
            else " (no comparisons: --full-report)."
        ),
        table(
            ["pipeline (test)", *metric_names, "NDCG@10 on validation"],
            [
                [
                    pipeline,
                    *(_with_error(metrics, key) for key in metric_names),
                    validation["pipelines"].get(pipeline, {}).get("ndcg@10", math.nan),
                ]
                for pipeline, metrics in test["pipelines"].items()
            ],
        ),
        *_intervals_table(test["intervals"]),
        table(
            ["ranker", "AUC within its pools (test)", "(validation)"],
            [
                [ranker, m["pool_auc"], validation["rankers"][ranker]["pool_auc"]]
                for ranker, m in test["rankers"].items()
            ],
        ),
        "Share of the served top 10 whose reasons are those of another item of the same answer: "
        f"{_cell(test['identical_reasons_top10'])} (test), "
        f"{_cell(validation['identical_reasons_top10'])} (validation).",
    ]
    if "like_weight_curve" in validation:
        parts.append(_like_weight_table(validation["like_weight_curve"], test["like_weight_curve"]))
    if shares := test.get("true_click_share_top10"):
        parts.append(
            table(
                ["pipeline", "true click probability of the top 10, share of the best possible (test)"],
                [[pipeline, share] for pipeline, share in shares.items()],
            )
        )
    return parts


def _like_weight_table(validation: list[dict], test: list[dict]) -> str:
    """The served pipeline at each like weight, each against the configured one (± paired standard error)."""

    def change(point: dict, metric: str) -> str:
        difference = point["difference"]
        return f"{point[metric]:.4f} ({difference[metric]:+.4f} ± {difference[f'{metric}_se']:.4f})"

    return table(
        ["like weight", "NDCG@10 validation (vs configured)", "HR@10 validation", "NDCG@10 test", "HR@10 test"],
        [
            [v["like_weight"], *(change(point, metric) for point in (v, t) for metric in ("ndcg@10", "hitrate@10"))]
            for v, t in zip(validation, test, strict=True)
        ],
    )


def markdown(report: dict[str, Any]) -> str:
    data = report["data"]
    parts = [
        f"# Model version {report['version']}",
        f"Source: {data['source']}; {data['rows']} sample rows, {data['items']} catalogue items. Every metric is "
        f"over the full catalogue; a query's relevant items are {data['relevant']}; the served score's like "
        f"weight is {data['like_weight']}.",
    ]
    for name, split in report["splits"].items():
        parts += split_section(name, split)
    if incremental := report.get("incremental"):
        parts += incremental_section(incremental)
    index = report["index"]
    parts += [
        *([f"![pipelines]({PIPELINE_PLOT})"] if report["splits"] else []),
        "## Index, time, size",
        f"Faiss index: {index['kind']}, {index['items']} items, recall@{index['k']} against exact search "
        f"{index['recall']:.4f}; exported models against the models in memory, largest difference: user "
        f"vectors {index['exported_user_tower_max_difference']:.2e}, "
        f"DIN scores {index['exported_ranker_max_difference']:.2e}.",
        table(["stage", "seconds"], [[name, f"{value:.1f}"] for name, value in report["timings_s"].items()]),
        table(
            ["model", "parameters", "exported bytes"],
            [[name, size["parameters"], size["bytes"]] for name, size in report["model_sizes"].items()],
        ),
        table(
            ["model", "epochs run", "kept epoch", "best validation"],
            [[name, len(h["losses"]), h["best_epoch"], max(h["validation"])] for name, h in report["training"].items()],
        ),
        f"![training]({LOSS_PLOT})",
    ]
    if gate := report.get("gate"):
        parts += ["## Gate", gate["verdict"]]
    return "\n\n".join(parts) + "\n"


def incremental_section(incremental: dict[str, Any]) -> list[str]:
    return [
        "## Incremental",
        f"Continues v{incremental['parent_version']} (from scratch at {incremental['from_scratch_at_utc']}) on "
        f"{incremental['new_rows']} sample rows after its data, {incremental['new_windows']} new and "
        f"{incremental['replayed_windows']} replayed training sequences, {incremental['ranker_rows']} ranker rows, "
        f"{incremental['added_items']} items added to the vocabulary; the gate judged the published models on "
        f"{incremental['validation_queries']} validation queries after the training rows.",
    ]


def _plot_pipelines(splits: dict[str, dict], path: Path) -> None:
    figure, axes = plt.subplots(len(splits), len(HEADLINE), figsize=(13, 4.5 * len(splits)), squeeze=False)
    for row, (name, split) in enumerate(splits.items()):
        pipelines = split["test"]["pipelines"]
        names = list(pipelines)
        for axis, metric in zip(axes[row], HEADLINE, strict=True):
            axis.barh(range(len(names)), [pipelines[pipeline][metric] for pipeline in names])
            axis.set_yticks(range(len(names)), names, fontsize=8)
            axis.invert_yaxis()
            axis.set_title(f"{name} split, test: {metric}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _plot_training(training: dict[str, dict], path: Path) -> None:
    figure, (losses, validation) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, history in training.items():
        epochs = range(1, len(history["losses"]) + 1)
        losses.plot(epochs, history["losses"], marker="o", label=name)
        if any(history["validation"]):
            validation.plot(epochs, history["validation"], marker="o", label=name)
    losses.set(xlabel="epoch", ylabel="mean training loss")
    validation.set(xlabel="epoch", ylabel="validation NDCG@10")
    losses.legend(fontsize=6)
    validation.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
