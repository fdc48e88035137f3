"""Per-session state: one browser tab's analysis, its files, its figure cache and its log.

Gradio keeps one `Session` per browser session inside a `gr.State` (created by calling
`Session` when the page loads). Nothing here is global: two users never see each other's
results, and a download only ever returns the file this session wrote into its own directory.

Files: every session writes into its own folder under `assets/sessions/` (`SESSIONS_ROOT`),
made on first use with an unguessable name (`secrets.token_hex`) and removed when the session
ends or its state expires (the app's session TTL); `sweep_sessions` removes folders a stopped
server left behind. Bundles, GIFs, run exports, the attention explorer's data and the arrays of
an opened bundle land there. Nothing is served from it directly: what the page shows or
downloads is copied into Gradio's own cache (as Gradio does for every file output; it only
copies from the working directory, the temporary folder or `allowed_paths`, so when the
dashboard runs from elsewhere the session folders go to `<temp>/dashboard-sessions`).
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gradio as gr

from analysis.result import Analysis
from models.common import UserError

log = logging.getLogger(__name__)

SESSION_DIR_PREFIX = "dashboard-session-"
SESSIONS_ROOT = Path(__file__).resolve().parents[1] / "assets" / "sessions"
MAX_CACHED_FIGURES = 400  # encoded PNGs (tens of kB each) kept per session


def sessions_root() -> Path:
    """The folder that holds every session's folder: `SESSIONS_ROOT` (assets/sessions) when the
    dashboard runs from its own folder, else `<temp>/dashboard-sessions` (Gradio copies a file
    output into its cache only from the working directory or the temporary folder)."""
    tmp = Path(tempfile.gettempdir()) / "dashboard-sessions"
    inside = SESSIONS_ROOT.resolve().is_relative_to(Path.cwd().resolve())
    for root in ((SESSIONS_ROOT, tmp) if inside else (tmp,)):
        try:
            root.mkdir(parents=True, exist_ok=True)
            if os.access(root, os.W_OK):
                return root
        except OSError:
            continue
    raise UserError(f"Cannot write session files under {SESSIONS_ROOT} nor {tmp}.")


def sweep_sessions(older_than_s: float) -> int:
    """Remove session folders whose newest file is older than `older_than_s` (left by a
    server that stopped before its sessions expired); returns how many were removed."""
    root, now, removed = sessions_root(), time.time(), 0
    for folder in root.glob(f"{SESSION_DIR_PREFIX}*"):
        try:
            newest = max([folder.stat().st_mtime]
                         + [p.stat().st_mtime for p in folder.rglob("*")])
        except OSError:
            continue
        if now - newest > older_than_s:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


@dataclass
class Session:
    analysis: Analysis | None = None
    analysis_id: int = 0  # bumped on every analysis; keys the figure cache and the bundle
    bundle_path: Path | None = None
    bundle_for: int = -1  # analysis_id the bundle was written for
    files: dict = field(default_factory=dict)  # (analysis_id, kind, model) -> Path (GIFs, ...)
    selection: dict = field(default_factory=dict)  # model -> (layer, head) shown in Layer Analysis
    dataset_cancel: bool = False  # the dataset run stops before its next batch when set
    layer_shown: int = -1  # the analysis_id the Layer Analysis tab shows
    log: list[dict] = field(default_factory=list)
    # the greedy continuations of the current analysis (model -> text; None: not causal), asked
    # for after it is shown, and the analysis_id they belong to
    continuations: dict = field(default_factory=dict)
    continuations_for: int = -1
    figures: dict = field(default_factory=dict)  # (analysis_id, kind, ...) -> encoded plot
    directory: Path | None = None  # created on first use

    # ------------------------------------------------------------------ files

    def folder(self) -> Path:
        """This session's private directory under `sessions_root()` (created on first use,
        unguessable name)."""
        if self.directory is None or not self.directory.is_dir():
            self.directory = Path(tempfile.mkdtemp(
                prefix=f"{SESSION_DIR_PREFIX}{secrets.token_hex(16)}-", dir=sessions_root()))
            # also removed when the Session is dropped without `cleanup` (its state overwritten by
            # the page-load event, which API clients can call, or evicted by Gradio's capacity)
            weakref.finalize(self, shutil.rmtree, str(self.directory), True)
        return self.directory

    def owns(self, path: str | Path) -> bool:
        """True when `path` lies inside this session's directory."""
        if self.directory is None:
            return False
        try:
            Path(path).resolve().relative_to(self.directory.resolve())
        except ValueError:
            return False
        return True

    # ------------------------------------------------------------------ analysis

    def set_analysis(self, analysis: Analysis) -> None:
        """A new analysis replaces the old one; its figures, files and bundle are dropped."""
        self.analysis = analysis
        self.analysis_id += 1
        self.figures.clear()
        self.selection.clear()
        for p in list(self.files.values()) + ([self.bundle_path] if self.bundle_path else []):
            _unlink(p)
        self.files.clear()
        self.bundle_path = None
        self.bundle_for = -1
        self.continuations, self.continuations_for = {}, -1

    def require_analysis(self) -> Analysis:
        if self.analysis is None:
            raise UserError("Run an analysis first: type a prompt, choose models and press Analyze.")
        return self.analysis

    # ------------------------------------------------------------------ figure cache

    def plot(self, key: tuple, make: Callable[[], Any]) -> Any:
        """The encoded plot for `key` in the current analysis, drawn by `make()` only once."""
        full = (self.analysis_id, *key)
        hit = self.figures.get(full)
        if hit is None:
            hit = encode_figure(make())
            if len(self.figures) >= MAX_CACHED_FIGURES:
                try:
                    self.figures.pop(next(iter(self.figures)), None)
                except (RuntimeError, StopIteration):  # changed by a concurrent event: skip
                    pass
            self.figures[full] = hit
        return hit

    def cached(self, key: tuple) -> bool:
        return (self.analysis_id, *key) in self.figures

    # ------------------------------------------------------------------ log

    def record(self, action: str, **details) -> dict:
        """Append a session-log entry ({"time", "action", ...}, as reports.bundle writes them)."""
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "action": action, **details}
        self.log.append(entry)
        return entry

    def add_entry(self, entry: dict) -> dict:
        self.log.append(entry)
        return entry


def encode_figure(fig) -> Any:
    """A matplotlib Figure -> the PNG payload gr.Plot sends (so it can be cached and reused).
    No lock: figures are separate objects and matplotlib keeps its fonts per thread (building
    them holds reports.figures' style lock, drawing needs none)."""
    from gradio.components.plot import PlotData
    from gradio.processing_utils import encode_plot_to_base64

    try:
        return PlotData(type="matplotlib", plot=encode_plot_to_base64(fig, "png"))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def cleanup(session: Session | None) -> None:
    """gr.State delete callback: remove the session's directory when the session ends."""
    if isinstance(session, Session) and session.directory is not None:
        shutil.rmtree(session.directory, ignore_errors=True)
        session.directory = None


def _unlink(path: Path | None) -> None:
    if path is not None:
        try:
            Path(path).unlink(missing_ok=True)
        except OSError:
            pass


def new_session() -> Session:
    return Session()


def new_state(time_to_live: float | None = None) -> gr.State:
    """The gr.State component holding one `Session` per browser session (made at page load).

    `time_to_live` (seconds after the session's state was last written, i.e. its last analysis
    or bundle): then the Session is dropped and `cleanup` removes its directory. Without it a
    session that never closes its page (an API client) would keep its results for good. With
    it, session folders a stopped server left behind (older than twice the TTL, at least a
    day) are swept now.
    """
    if time_to_live:
        sweep_sessions(max(2 * float(time_to_live), 86400.0))
    return gr.State(new_session, delete_callback=cleanup, time_to_live=time_to_live)


def safe_text(text: str) -> str:
    """`text` with undecodable data (lone surrogates, from bad UTF-8 in a request) as U+FFFD, so
    that it can be sent back as JSON and written into the session log and bundle."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def friendly_errors(fn: Callable) -> Callable:
    """Errors a user can cause become gr.Error with the message; bugs a short gr.Error too.

    Either way the event ends cleanly and the app keeps working.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except UserError as exc:
            raise gr.Error(safe_text(str(exc)), title="Cannot do that",
                           print_exception=False) from None
        except Exception as exc:  # a bug: log it with the traceback, tell the user briefly
            log.exception("%s failed", fn.__name__)
            raise gr.Error(safe_text(f"Internal error in {fn.__name__}: {type(exc).__name__}: "
                                     f"{exc}"[:500]), title="Internal error") from None
        finally:
            log.debug("%s took %.3f s", fn.__name__, time.perf_counter() - t0)

    return wrapper
