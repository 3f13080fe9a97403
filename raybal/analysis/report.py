"""``raybal report DIR``: the standard figures as PNG plus an ``index.html`` with a summary table.

Reads only the Parquet tables and ``study.json`` / ``run.json``. A figure whose tables are
missing for this kind of results (e.g. no search in a single run) is skipped with a note in
the page and in the returned list, never a crash. Files are written under temporary names
and renamed, so a page never references a half-written image.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from raybal.results.tables import ResultsError, atomic_path, check_writable, load_results


@dataclass
class Figure:
    name: str
    caption: str
    path: Path | None
    note: str | None = None


def summary_table(res) -> pd.DataFrame:  # noqa: ANN001 - Results
    from raybal.analysis.best import searched_columns
    from raybal.analysis.plots import trial_labels

    t = res.trials
    if t.empty:
        return t
    cols = ["trial_id", "config_id", "role", "train.seed", "status", "balance.method"] + searched_columns(t, res.meta)
    cols += [c for c in t.columns if c.startswith(("final.val_", "final.test_")) and not c.endswith("loss")
             and "mu" not in c]
    cols += [c for c in t.columns if c.startswith("final.mu.")]
    cols += [c for c in t.columns if c.startswith("robust.") and "_mean_" in c] + ["wall_s"]
    out = t[[c for c in dict.fromkeys(cols) if c in t.columns]].copy()
    out.insert(1, "label", out["trial_id"].map(trial_labels(t)))
    return out


def make_report(results_dir: str | Path, out_dir: str | Path | None = None, dpi: int = 110) -> list[Figure]:
    """Write every figure that the tables support to ``out_dir`` (default ``DIR/report``)."""
    import matplotlib

    matplotlib.use("Agg")  # files only (a notebook keeps its own backend: it calls raybal.analysis.plots directly)
    import matplotlib.pyplot as plt

    from raybal.analysis.plots import FIGURES, NoData

    res = load_results(results_dir)
    out = check_writable(Path(out_dir) if out_dir else res.path / "report")
    figures: list[Figure] = []
    search = res.search()  # the search's figures stand on its own runs; "confirmation" reads both
    for name, (fn, caption) in FIGURES.items():
        try:
            fig = fn(res if name == "confirmation" else search)
        except (NoData, ResultsError) as exc:  # e.g. no configuration to call best yet: a note, not a failure
            figures.append(Figure(name, caption, None, str(exc)))
            continue
        path = out / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        plt.close(fig)
        figures.append(Figure(name, caption, path))
    _write_index(res, out, figures)
    return figures


def _write_index(res, out: Path, figures: list[Figure]) -> None:  # noqa: ANN001
    table = summary_table(res)
    kind = res.meta.get("kind", "run")
    title = f"raybal report: {res.meta.get('name', res.path.name)} ({kind}, {len(res.trials)} trials)"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}"
             ".note{color:#666}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p>Results directory: <code>{html.escape(str(res.path))}</code></p>", *_best_section(res),
             "<h2>Runs</h2>",
             table.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="", border=0)]
    for f in figures:
        parts.append(f"<h2>{html.escape(f.name)}</h2><p>{html.escape(f.caption)}</p>")
        if f.path is not None:
            parts.append(f"<img src='{html.escape(f.path.name)}' alt='{html.escape(f.caption)}'>")
        else:
            parts.append(f"<p class='note'>skipped: {html.escape(f.note or '')}</p>")
    parts.append("</body></html>")
    with atomic_path(out / "index.html") as tmp:
        Path(tmp).write_text("\n".join(parts))


def _best_section(res) -> list[str]:  # noqa: ANN001 - Results
    """``raybal best``'s answer (mean ± interval, vs baseline and runner-up, the Pareto set) for a study."""
    from raybal.analysis.best import best_trial, format_best
    from raybal.results.tables import ResultsError

    if res.kind != "study":
        return []
    try:
        text = format_best(best_trial(res.path))
    except ResultsError as exc:
        text = f"no best configuration: {exc}"
    return ["<h2>Best configuration</h2>", f"<pre>{html.escape(text)}</pre>"]
