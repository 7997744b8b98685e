"""``adapmtl compare``: several models against one baseline, in the paper's Table 2 layout (the
table itself is drawn by ``report.tables``)."""

from __future__ import annotations

from pathlib import Path

from adapmtl_cli.workflows.evaluate import metric_directions, result_of


def compare(files: list[Path], baseline: Path, **eval_options) -> dict:
    """The paper's Table 2 for several models: every metric, Delta per task, component sparsity,
    Delta_T and Delta_p against ``baseline``. Each file is an eval JSON or a checkpoint."""
    from adapmtl_cli.tasks.scores import delta_scores

    reference = result_of(baseline, **eval_options)
    rows = [("baseline", baseline, reference)] + [(Path(f).stem, f, result_of(f, **eval_options)) for f in files]
    directions = metric_directions(list(reference["metrics"]))
    table = []
    for label, path, result in rows:
        scores = delta_scores(result["metrics"], reference["metrics"], directions)
        table.append({
            "model": label, "file": str(path), "metrics": result["metrics"],
            "sparsity": result.get("sparsity", {}),
            "delta": {"per_task": scores.per_task, "delta_t": scores.delta_t, "delta_p": scores.delta_p,
                      "skipped": [vars(s) for s in scores.skipped]},
        })
    return {"baseline": str(baseline), "rows": table, "definition": scores.definition if rows else {}}
