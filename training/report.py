"""The evaluation report of one training run: report.json, report.md and PNG plots."""

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import orjson

from training.evaluate import CUTOFFS

PIPELINE_PLOT, LOSS_PLOT = "pipelines.png", "training.png"


def write_report(directory: Path, report: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    (directory / "report.md").write_text(markdown(report))
    _plot_pipelines(report["pipelines"], directory / PIPELINE_PLOT)
    _plot_training(report["training"], directory / LOSS_PLOT)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows])


def markdown(report: dict[str, Any]) -> str:
    metric_names = [f"{name}@{k}" for k in CUTOFFS for name in ("recall", "ndcg", "hitrate")]
    data = report["data"]
    parts = [
        f"# Model version {report['version']}",
        f"Source: {data['source']}; {data['rows']} sample rows, {data['items']} catalogue items. "
        f"Train {data['train_rows']} rows before {data['validate_from_utc']}, validate {data['validate_rows']}, "
        f"test {data['test_rows']} from {data['test_from_utc']}; {data['queries']} test queries.",
        "## Rankers on the test rows",
        _table(["ranker", "AUC", "GAUC"], [[name, m["auc"], m["gauc"]] for name, m in report["rankers"].items()]),
        "## Retrieval -> ranking over the full catalogue",
        _table(
            ["pipeline", *metric_names],
            [[name, *(m[key] for key in metric_names)] for name, m in report["pipelines"].items()],
        ),
        f"![pipelines]({PIPELINE_PLOT})",
        "## Index, time, size",
        f"Faiss index: {report['index']['kind']}, {report['index']['items']} items, "
        f"recall@{report['index']['k']} against exact search {report['index']['recall']:.4f}.",
        _table(["stage", "seconds"], [[name, f"{value:.1f}"] for name, value in report["timings_s"].items()]),
        _table(
            ["model", "parameters", "exported bytes"],
            [[name, size["parameters"], size["bytes"]] for name, size in report["model_sizes"].items()],
        ),
        _table(
            ["model", "epochs run", "kept epoch", "validation"],
            [[name, len(h["losses"]), h["best_epoch"], max(h["validation"])] for name, h in report["training"].items()],
        ),
        f"![training]({LOSS_PLOT})",
    ]
    if gate := report.get("gate"):
        parts += ["## Gate", gate["verdict"]]
    return "\n\n".join(parts) + "\n"


def _plot_pipelines(pipelines: dict[str, dict[str, float]], path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(pipelines)
    for axis, metric in zip(axes, ("recall", "ndcg"), strict=True):
        width = 0.8 / len(CUTOFFS)
        for n, k in enumerate(CUTOFFS):
            values = [pipelines[name][f"{metric}@{k}"] for name in names]
            axis.bar([i + n * width for i in range(len(names))], values, width, label=f"@{k}")
        axis.set_xticks([i + width / 2 for i in range(len(names))], names, rotation=20, ha="right", fontsize=8)
        axis.set_title(metric.upper() if metric == "ndcg" else metric.capitalize())
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _plot_training(training: dict[str, dict], path: Path) -> None:
    figure, (losses, validation) = plt.subplots(1, 2, figsize=(11, 4))
    for name, history in training.items():
        epochs = range(1, len(history["losses"]) + 1)
        losses.plot(epochs, history["losses"], marker="o", label=name)
        validation.plot(epochs, history["validation"], marker="o", label=name)
        validation.axvline(history["best_epoch"], linestyle=":", color=validation.lines[-1].get_color())
    losses.set(xlabel="epoch", ylabel="mean training loss")
    validation.set(xlabel="epoch", ylabel="validation (GAUC; Recall@50 for two-tower)", title="kept epoch dotted")
    losses.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
