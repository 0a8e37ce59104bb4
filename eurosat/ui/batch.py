"""The Batch tab and /batch: many tiles at once, or a ZIP of them, in a table with the doubtful ones first."""

from __future__ import annotations

from typing import Any

import gradio as gr

from .. import batch as batches
from .shared import Tab, user_errors, with_our_example

HEADERS = ["file", "top-1", "probability", "top-3", "error"]
INTRO = (
    "Upload several tiles, or one ZIP archive of them (folders inside are fine), to classify them all at once. "
    "The least confident answers come first, after any file that could not be read; download the CSV for all."
)


def table_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [[r["file"], r["label"] or "", None if r["probability"] is None else round(r["probability"], 4),
             r["top3"], r["error"] or ""] for r in rows]


class BatchTab(Tab):
    """The /batch endpoint and the tab's components."""

    def admit(self, files: Any, request: gr.Request = None) -> list[dict[str, Any]]:
        """Run when a batch is submitted: within this visitor's share of heavy work, or refused at once."""
        return self.served.admit(1, request)

    @user_errors
    def batch(self, files: Any, progress: gr.Progress = gr.Progress(),
              request: gr.Request = None) -> tuple[list[list[Any]], str]:
        """Classify many Sentinel-2 RGB tiles at once: several image files, or ZIP archives of them.

        Returns a table (file, top-1, probability, top-3, error) with errors and the least confident answers
        first, and a CSV with the same columns (file, label, probability, top3, error); file is each upload's own
        name, or its path inside the archive.
        """
        predictor = self.served.model()
        uploads = files if isinstance(files, list) else [] if files is None else [files]
        checked = [self.served.upload(f) for f in uploads]
        progress(0, desc="Classifying files")
        with self.served.heavy("batch", request, progress, "files") as report:
            rows = batches.classify_batch(checked, predictor, max_pixels=self.served.config.max_pixels,
                                          progress=report, batch_size=self.served.config.heavy_batch)
        csv = batches.write_batch(rows, self.served.outputs.new())
        return table_rows(rows), str(csv)

    def render(self) -> dict[str, Any]:
        gr.Markdown(INTRO)
        files = with_our_example(gr.File(file_count="multiple", file_types=["image", ".zip", ".tif", ".tiff"],
                                         label="Tiles or ZIP archives", elem_id="batch-input"))
        with gr.Row():
            button = gr.Button("Classify all", variant="primary", elem_id="batch-run")
            stop = gr.Button("Stop", variant="stop", elem_id="batch-stop")
        table = gr.Dataframe(headers=HEADERS, label="Results, least confident first", interactive=False,
                             elem_id="batch-table")
        csv = gr.File(label="Results (CSV)", interactive=False, elem_id="batch-csv")
        return {"files": files, "button": button, "stop": stop, "table": table, "csv": csv}
