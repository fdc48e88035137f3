"""Diffusion tab: a placeholder until the diffusion issue lands (that engineer replaces this file).

`build(ctx)` is called inside the app's gr.Tab("Diffusion"); it gets the same Context as the
other tabs (ctx.config, ctx.models, ctx.state, ctx.load).
"""

from __future__ import annotations

import gradio as gr


def build(ctx) -> None:
    gr.Markdown("### Masked diffusion vs autoregressive generation\n"
                "This tab arrives with the diffusion issue: step-by-step unmasking by a masked "
                "diffusion language model next to an autoregressive one.",
                elem_id="diffusion-placeholder")
