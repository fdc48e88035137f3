"""The Gradio app: configuration, the four tabs wired together, and `serve`.

    from ui.app import AppConfig, serve
    serve(AppConfig(port=7861))

The page comes up without loading any model; a model is loaded (and kept in the bounded
`models.loading.MODELS`) the first time an analysis asks for it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import gradio as gr

from models.common import UserError
from ui import api, details_tab, diffusion_tab, layer_tab, overall_tab
from ui import limits as limits_mod
from ui.config import AppConfig
from ui.state import friendly_errors, new_state

log = logging.getLogger(__name__)

TITLE = "Transformer analysis dashboard"

CSS = """
.gradio-container { max-width: 1500px !important; margin: 0 auto; }
#notices:empty { display: none; }
#notices p { margin: 0.2em 0; }
.model-header h3 { margin: 0.2em 0 0.1em 0; }
#details { font-size: 15px; line-height: 1.55; }
#details table { font-size: 14px; }
#details th, #details td { word-break: normal; overflow-wrap: normal; }
#details td code { white-space: nowrap; }
#layer-error:empty, #target-info:empty { display: none; }
#layer-error p { color: #b42318; font-weight: 500; margin: 0; }
#layer-source p { margin: 0.2em 0; }
"""


@dataclass
class Context:
    """What every tab's `build(ctx)` gets: the config, the offered models, the session state."""

    config: AppConfig
    models: list[str]
    state: gr.State | None = None
    load: Callable | None = None
    tabs: dict = field(default_factory=dict)  # tab name -> what its build() returned


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    if not auth:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise UserError("--auth must look like USER:PASS (both non-empty).")
    return user, password


def offered_models(config: AppConfig) -> list[str]:
    """The names the page offers: the configured list (checked) or the registry default."""
    from models.registry import default_models, resolve

    if config.models is None:
        names = default_models()
    else:
        names = []
        for name in config.models:
            entry = resolve(name, allow_custom=True)  # the command line may name any model
            names.append(entry.name)
    return list(dict.fromkeys(names))


def check_config(config: AppConfig) -> None:
    if not 0 <= int(config.port) <= 65535:
        raise UserError(f"--port must be 0..65535, got {config.port}.")
    limits_mod.check_limits(config)
    from models.loading import LoadOptions, check_options

    check_options(LoadOptions(device=config.device, dtype=config.dtype))  # refused before serving
    if int(config.max_models_per_analysis) < 1:
        raise UserError("max_models_per_analysis must be at least 1.")
    parse_auth(config.auth)


def runs_on(config: AppConfig) -> str:
    """One line saying where models run here: the device and the weights' dtype."""
    from models.loading import resolve_device, resolve_dtype

    device = resolve_device(config.device)
    return (f"Models run on **{device}** with **{resolve_dtype(config.dtype, device)}** weights "
            "(metrics in float64).")


def make_context(config: AppConfig, models: list[str] | None = None) -> Context:
    from models.loading import LoadOptions, load

    options = LoadOptions(trust_remote_code=config.trust_remote_code,
                          allow_pickle=config.allow_pickle, allow_custom=True,
                          device=config.device, dtype=config.dtype)
    return Context(config=config, models=offered_models(config) if models is None else models,
                   load=lambda name: load(name, options))


def build_app(config: AppConfig, ctx: Context | None = None) -> gr.Blocks:
    """The whole dashboard as a gr.Blocks (not launched). No model is loaded here."""
    check_config(config)
    ctx = ctx or make_context(config)
    # delete_cache: Gradio's copies of served files (bundles, GIFs) older than 2 h, checked hourly
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 7200)) as demo:
        ctx.state = new_state(time_to_live=config.session_ttl_s)
        gr.Markdown(f"# {TITLE}\nLook inside transformer language models: how representations "
                    "change layer by layer, what every attention head does, what the model "
                    "predicts and why. Start on **Overall**, then open **Layer Analysis**; "
                    f"**Details** explains every number. {runs_on(config)}", elem_id="title")
        if not ctx.models:
            gr.Markdown("**No model is available.** The embedded checkpoints are missing from "
                        "`models/embedded/`; retrain them (see README).", elem_id="no-models")
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Overall", id="overall", elem_id="tab-overall"):
                ctx.tabs["overall"] = overall_tab.build(ctx)
            with gr.Tab("Layer Analysis", id="layer", elem_id="tab-layer") as layer_tab_page:
                ctx.tabs["layer"] = layer_tab.build(ctx)
            with gr.Tab("Diffusion", id="diffusion", elem_id="tab-diffusion"):
                ctx.tabs["diffusion"] = diffusion_tab.build(ctx)
            with gr.Tab("Details", id="details", elem_id="tab-details"):
                ctx.tabs["details"] = details_tab.build(ctx)
        # an analysis refreshes the Layer Analysis tab from the stored result (no model re-run)
        layer_tab.wire_analysis(ctx, ctx.tabs["overall"].analyzed, ctx.tabs["layer"])
        layer_tab.wire_tab_open(ctx, layer_tab_page, ctx.tabs["layer"])  # e.g. after a diffusion step
        # a bundle opened in Layer Analysis becomes the session's analysis: Overall shows it too
        ctx.tabs["layer"].extra["bundle_opened"].success(
            friendly_errors(lambda s: overall_tab.show_event(ctx, s)), [ctx.state],
            ctx.tabs["overall"].outputs, api_visibility="private", show_progress="hidden")
        api.build(ctx)  # the named endpoints: analyze, predict, generate (the CLI's JSON)
    return demo


def launch_kwargs(config: AppConfig) -> dict:
    return dict(server_name=config.host, server_port=config.port, share=config.share,
                auth=parse_auth(config.auth), theme=gr.themes.Soft(), css=CSS, ssr_mode=False,
                footer_links=["api", "settings"], show_error=True, quiet=True)


def serve(config: AppConfig, block: bool = True) -> gr.Blocks:
    """Build and launch the app; prints the local URL. Survives `share` failing offline."""
    if config.share and not config.auth:
        msg = ("--share makes this dashboard reachable by anyone with the link, and no "
               "--auth USER:PASS is set: anyone can run models on this machine.")
        print(f"\n{'!' * 78}\nWARNING: {msg}\n{'!' * 78}\n", file=sys.stderr, flush=True)
        log.warning(msg)
    if config.allow_pickle:
        msg = ("--allow-pickle-weights: *.bin/*.pt weights are unpickled when loaded and can run "
               "code; use it only for checkpoints you trust.")
        print(f"WARNING: {msg}", file=sys.stderr, flush=True)
        log.warning(msg)
    demo = build_app(config)
    demo.queue(default_concurrency_limit=config.max_concurrent_jobs)
    kwargs = launch_kwargs(config)
    try:
        demo.launch(prevent_thread_lock=True, **kwargs)
    except OSError as exc:  # port taken, host not available
        demo.close()
        raise UserError(f"Cannot serve on {config.host}:{config.port}: {exc} "
                        "Choose another --port or --host.") from None
    except Exception as exc:  # e.g. the share tunnel raising instead of printing
        if not config.share:
            raise
        log.warning("share link failed (%s); serving locally only", exc)
        print(f"Could not create a share link ({exc}); serving locally only.", file=sys.stderr)
        demo.close()
        kwargs["share"] = False
        demo.launch(prevent_thread_lock=True, **kwargs)
    from models.loading import settle_garbage

    settle_garbage()  # the app's own long-lived objects out of later full collections
    host = "localhost" if config.host in ("0.0.0.0", "::", "") else config.host
    print(f"Dashboard running on http://{host}:{demo.server_port}", flush=True)
    if config.share:
        if demo.share_url:
            print(f"Public share link: {demo.share_url}", flush=True)
        else:
            print("No share link could be created (offline?); the dashboard is served locally only.",
                  file=sys.stderr, flush=True)
    if block:
        try:
            demo.block_thread()
        except (KeyboardInterrupt, OSError):
            demo.close()
    return demo
