"""The Overall tab's dataset mode: layer geometry over many texts (analysis.dataset).

Thin: `analysis.dataset.analyze_dataset` does the work, `reports.figures.dataset` draws,
`reports.dataset_report` writes the ZIP. A run can be cancelled between two batches; nothing
is written for a cancelled run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from models.common import UserError, file_safe, whole_number
from ui import limits
from ui.inputs import chosen_models
from ui.state import Session, encode_figure, friendly_errors

log = logging.getLogger(__name__)

UPLOAD_TYPES = [".txt", ".jsonl", ".json", ".csv", ".tsv"]
DEFAULT_LIMIT = 300


@dataclass
class DatasetPanel:
    run_btn: gr.Button
    cancel_btn: gr.Button
    outputs: list


def bundled() -> list[str]:
    from analysis.datasets_builtin import NAMES

    return list(NAMES)


def source_of(choice: str | None, upload) -> str:
    """The dataset to read: an uploaded file wins over the bundled choice."""
    path = upload.get("path") if isinstance(upload, dict) else upload
    if path:
        return str(path)
    if not choice:
        raise UserError("Choose a bundled dataset or upload a file (.txt one text per line, "
                        ".jsonl/.json/.csv/.tsv with a text column).")
    return str(choice)


def layer_table(results: list) -> pd.DataFrame:
    """One row per model and layer: the headline numbers of each kind, rounded for reading."""
    rows = []
    for r in results:
        for s in r.summary.layers:
            tw = s.token_sample.get("intrinsic_dim_twonn")
            ae = s.per_text.get("activation_entropy")
            a = s.all_tokens

            def f(v, digits=4):
                return None if v is None else float(f"{v:.{digits}g}")

            rows.append({"model": r.model, "layer": s.layer,
                         "effective rank (all tokens)": f(a.get("effective_rank")),
                         "participation ratio (all tokens)": f(a.get("participation_ratio")),
                         "PCA 95% (all tokens)": a.get("intrinsic_dim_pca95"),
                         "TwoNN (sample)": f(tw.value if tw else None),
                         "TwoNN 95% low": f(tw.ci_low if tw else None),
                         "TwoNN 95% high": f(tw.ci_high if tw else None),
                         "prompt entropy (per text, mean)": f(ae.mean if ae else None),
                         "dataset entropy": f(s.dataset_entropy),
                         "anisotropy (all tokens)": f(a.get("anisotropy"))})
    return pd.DataFrame(rows)


def summary_text(results: list, source: str, limit: int) -> str:
    parts = [f"**Dataset** `{Path(source).name}` (the first {limit:,} texts at most):"]
    for r in results:
        parts.append(f"- **{r.model}**: {r.texts:,} texts, {r.tokens:,} tokens, {r.seconds:.1f} s "
                     f"({r.tokens_per_second:,.0f} tokens/s); token sample "
                     f"{r.summary.sample_tokens:,} rows; dataset entropy from "
                     f"{r.summary.pooled_texts:,} texts.")
        parts += [f"  - ⚠️ {n}" for n in r.notices]
    return "\n".join(parts)


def dataset_event(ctx, session: Session, models, choice, upload, limit, progress=None) -> tuple:
    """Run every chosen model over the dataset; returns (summary, curves, per-text figure,
    table, download, state)."""
    from analysis.dataset import DatasetCancelled, analyze_dataset
    from reports.dataset_report import write_dataset_bundle
    from reports.figures import dataset as dfigs

    session = session if isinstance(session, Session) else Session()
    names = chosen_models(ctx, models, None)
    source = source_of(choice, upload)
    limit = whole_number("The number of texts", limit, 1, ctx.config.max_dataset_texts)
    session.dataset_cancel = False
    results = []
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        def report(done, total, tps, left, i=i, name=name):
            if progress is not None:
                total = min(total or limit, limit)
                eta = f", about {left:,.0f} s left" if left is not None else ""
                progress((i + done / max(total, 1)) / len(names),
                         desc=f"{name}: {done:,}/{total:,} texts, {tps:,.0f} tokens/s{eta}")
        try:
            results.append(analyze_dataset(
                ctx.load(name), source, limit=limit, max_tokens=ctx.config.max_prompt_tokens,
                progress=report, cancel=lambda: session.dataset_cancel))
        except DatasetCancelled as exc:
            session.record("analyze dataset (cancelled)", models=names, dataset=source,
                           result=str(exc))
            raise UserError(f"{exc} Nothing was kept.") from None
    bundle = session.folder() / f"dataset-{file_safe('_'.join(names))[:60]}.zip"
    write_dataset_bundle(results, bundle)
    session.record("analyze dataset", models=names, dataset=source, limit=limit,
                   seconds=round(time.perf_counter() - t0, 2),
                   summary={r.model: {"texts": r.texts, "tokens": r.tokens} for r in results})
    per_text = dfigs.per_text_distributions(results[0])
    return (summary_text(results, source, limit), encode_figure(dfigs.dataset_curves(results)),
            encode_figure(per_text), layer_table(results),
            gr.update(value=str(bundle), visible=True), session)


def build(ctx, models: gr.Dropdown) -> DatasetPanel:
    """The dataset-mode panel (inside the Overall tab; `models` is the tab's model picker)."""
    gr.Markdown("Measure every layer over many texts instead of one prompt: exact all-token "
                "statistics, a sampled TwoNN with its interval, per-text distributions and the "
                "dataset entropy (see **Details**). Pick the models above.",
                elem_id="dataset-help")
    with gr.Row():
        choice = gr.Dropdown(choices=bundled(), value="stdlib-docstrings",
                             label="Bundled dataset", elem_id="dataset-choice", scale=2)
        upload = gr.File(label="…or upload (.txt, .jsonl, .json, .csv, .tsv)",
                         file_types=UPLOAD_TYPES, elem_id="dataset-upload", scale=2)
        limit = gr.Number(value=DEFAULT_LIMIT, precision=0, minimum=1,
                          maximum=ctx.config.max_dataset_texts, label="Texts (at most)",
                          elem_id="dataset-limit", scale=1)
    with gr.Row():
        run_btn = gr.Button("Analyze dataset", variant="primary", elem_id="dataset-run")
        cancel_btn = gr.Button("Cancel", elem_id="dataset-cancel")
    summary = gr.Markdown("", elem_id="dataset-summary")
    curves = gr.Plot(label="Layer metrics over the dataset", elem_id="dataset-curves",
                     format="png", show_label=False)
    per_text = gr.Plot(label="Per-text distributions", elem_id="dataset-per-text", format="png",
                       show_label=False)
    table = gr.Dataframe(label="Per layer", elem_id="dataset-table", interactive=False,
                         wrap=True, max_height=360)
    download = gr.File(label="Download (ZIP: PDF, CSV, accumulators NPZ, PNG)",
                       elem_id="dataset-download", interactive=False, visible=False)
    outputs = [summary, curves, per_text, table, download, ctx.state]

    @friendly_errors
    def on_run(session, models_value, choice_value, upload_value, limit_value,
               progress=gr.Progress()):
        return dataset_event(ctx, session, models_value, choice_value, upload_value, limit_value,
                             progress)

    def on_cancel(session):
        if isinstance(session, Session):
            session.dataset_cancel = True
        return gr.Button(value="Cancelling after this batch…")

    run_btn.click(on_run, [ctx.state, models, choice, upload, limit], outputs,
                  api_visibility="private", concurrency_id=limits.MODEL_CONCURRENCY_ID,
                  concurrency_limit=1).then(lambda: gr.Button(value="Cancel"), None, [cancel_btn],
                                            queue=False, api_visibility="private")
    cancel_btn.click(on_cancel, [ctx.state], [cancel_btn], queue=False, api_visibility="private")
    return DatasetPanel(run_btn, cancel_btn, outputs)
