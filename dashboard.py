"""Transformer analysis dashboard: the Gradio app and the same work headless.

    python dashboard.py                 # serve the app on 0.0.0.0:7860
    python dashboard.py models --json models.json
    python dashboard.py analyze --model tiny-gpt2 --prompt "the capital of japan is" --out b.zip
    python dashboard.py predict --model tiny-bert --prompt "the capital of japan is [MASK]."

Every subcommand prints one clear line and exits 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

log = logging.getLogger("dashboard")


class CliError(Exception):
    """Bad command-line input (exit 2)."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise CliError(f"{message} (see `python dashboard.py {self.prog.split()[-1]} --help`)"
                       if " " in self.prog else f"{message} (see --help)")


def _write_json(path: str | None, data) -> None:
    if not path:
        return
    out = Path(path)
    tmp = out.with_suffix(out.suffix + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=2, default=_json_default))
        os.replace(tmp, out)
    except OSError as exc:
        if tmp.is_file():
            tmp.unlink()
        raise CliError(f"cannot write --json {path}: {exc.strerror or exc}") from None


def _writing(flag: str, path: str, write):
    """Run `write()` (a bundle or export writer); an unwritable path is a one-line error."""
    try:
        return write()
    except OSError as exc:
        raise CliError(f"cannot write {flag} {path}: {exc.strerror or exc}") from None


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj).__name__)


def _text(name: str, value: str | None) -> None:
    """Command-line text that is not valid UTF-8 arrives with lone surrogates: refuse it here."""
    from models.common import UserError, check_text

    if value is not None:
        try:
            check_text(value)
        except UserError:
            raise CliError(f"--{name} is not valid UTF-8 text; check the terminal's encoding or "
                           "pass the text in a UTF-8 --prompts file") from None


def _finite(name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise CliError(f"--{name} must be a finite number, got {value}")


def _load_options(args):
    from models.loading import LoadOptions

    return LoadOptions(trust_remote_code=getattr(args, "trust_remote_code", False),
                       allow_pickle=getattr(args, "allow_pickle_weights", False))


# ----------------------------------------------------------------------------- subcommands

def cmd_models(args) -> int:
    from models.registry import builtin_entries, describe

    rows = [describe(e) for e in builtin_entries()]
    for r in rows:
        state = "yes" if r["available"] else "no "
        shape = f"{r['n_layers']}L x {r['n_heads']}H" if r["n_layers"] else "?"
        params = f"{r['params']:,}" if r["params"] else "?"
        print(f"{state}  {r['name']:38s} {r['family']:9s} {r['task']:10s} {shape:10s} "
              f"{params:>12s}  {r['reason']}")
    _write_json(args.json, rows)
    return 0


def cmd_analyze(args) -> int:
    from analysis.result import LAYER_COLUMNS
    from analysis.run import analyze, continuation_of, summary_json
    from models.loading import load
    from models.predictions import check_top_k

    _text("prompt", args.prompt)
    check_top_k(args.top_k)
    if args.prompt is None or not args.prompt.strip():
        raise CliError("give a non-empty --prompt TEXT")
    opts = _load_options(args)
    result = analyze(args.model, [args.prompt], load=lambda n: load(n, opts), top_k=args.top_k,
                     ablation=args.head_ablation, seed=args.seed, chat_template=args.chat_template)
    continuations = {}
    for r in result.results:  # a generation, asked for after the analysis
        continuations[r.name] = continuation_of(load(r.name, opts), r, seed=args.seed)
    for r in result.results:
        for notice in r.trace.notices:
            print(f"notice ({r.name}): {notice}")
        print(f"{r.name}: {r.trace.n_tokens} tokens, {r.trace.n_layers} layers x "
              f"{r.trace.n_heads} heads, {r.seconds:.2f} s on {r.info.device} ({r.info.dtype})")
        print("  layer  erank     PR  pca95  twonn  act_ent  cos_in  aniso  att_ent")
        for layer in range(r.layers.n_layers + 1):
            cells = [r.layers.value(k, layer) for k in LAYER_COLUMNS]
            print(f"  {layer:5d} " + " ".join(_cell(c) for c in cells))
        if r.predictions is not None and r.predictions.top:
            top = ", ".join(f"{p.token} {p.probability:.3f}" for p in r.predictions.top[:5])
            print(f"  predictions: {top}")
        if continuations.get(r.name):
            print(f"  continuation: {continuations[r.name]}")
    _write_json(args.json, summary_json(result, continuations))
    if args.out:
        from reports.bundle import write_bundle

        path = _writing("--out", args.out,
                        lambda: write_bundle(result, args.out, continuations=continuations))
        print(f"bundle: {path}")
    return 0


def _cell(v) -> str:
    if v is None:
        return "      -"
    return f"{v:7.3f}" if isinstance(v, float) else f"{v:7d}"


def cmd_predict(args) -> int:
    from models.loading import load
    from models.predictions import predict

    _text("prompt", args.prompt)
    _finite("temperature", args.temperature)
    _finite("top-p", args.top_p)
    if args.max_new_tokens < 1:
        raise CliError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    loaded = load(args.model, _load_options(args))
    out = predict(loaded, args.prompt, top_k=args.top_k, max_new_tokens=args.max_new_tokens,
                  temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                  chat_template=args.chat_template)
    for notice in out.get("notices", []):
        print(f"notice: {notice}")
    for p in out["predictions"]:
        print(f"{p['probability']:.4f}  {p['token']}")
    print(f"text: {out['text']}")
    _write_json(args.json, out)
    return 0


def cmd_serve(args) -> int:
    from ui.app import AppConfig, serve

    if args.auth is not None and (":" not in args.auth or args.auth.startswith(":")):
        raise CliError("--auth must look like USER:PASS")
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    serve(AppConfig(host=args.host, port=args.port, share=args.share, auth=args.auth,
                    models=models, allow_custom_models=args.allow_custom_models,
                    trust_remote_code=args.trust_remote_code,
                    allow_pickle=args.allow_pickle_weights,
                    max_prompt_tokens=args.max_prompt_tokens,
                    max_generation_length=args.max_generation_length,
                    max_concurrent_jobs=args.max_concurrent_jobs))
    return 0


def cmd_generate(args) -> int:
    from models import generation as gen
    from models.loading import load

    _text("prompt", args.prompt)
    for name in ("threshold", "temperature", "top_p", "cfg_scale"):
        _finite(name.replace("_", "-"), getattr(args, name))
    loaded = load(args.model, _load_options(args))
    if loaded.task == "causal":
        if args.steps not in (None, args.length) or args.block_length or args.threshold:
            raise CliError(f"'{args.model}' is autoregressive: --steps, --block-length and "
                           "--threshold apply to diffusion models only")
        result = gen.autoregressive_generate(loaded, args.prompt, args.length,
                                             temperature=args.temperature, top_k=args.top_k,
                                             top_p=args.top_p, seed=args.seed,
                                             stop_at_eos=not args.ignore_eos)
    elif args.ignore_eos:
        raise CliError("--ignore-eos applies to autoregressive models only")
    elif args.schedule:
        result = gen.remask_generate(loaded, args.prompt, args.length, args.steps or args.length,
                                     schedule=args.schedule, sampling=args.sampling,
                                     top_k=args.top_k or 50, top_p=args.top_p or 0.9,
                                     temperature=args.temperature or 1.0, seed=args.seed)
    else:
        result = gen.diffusion_generate(loaded, args.prompt, args.length, steps=args.steps,
                                        block_length=args.block_length, strategy=args.strategy,
                                        threshold=args.threshold, temperature=args.temperature,
                                        top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                        cfg_scale=args.cfg_scale)
    mem = ("n/a: " + result.peak_memory_note if result.peak_memory_mb is None
           else f"{result.peak_memory_mb:.3f} MB")
    print(f"{result.paradigm}: {result.generated_tokens} content tokens of {result.positions} "
          f"positions in {result.steps} steps, nfe {result.nfe} "
          f"({result.tokens_per_forward_pass:.2f} content tokens per forward pass), "
          f"{result.seconds:.3f} s, {result.tokens_per_second:.1f} content tokens/s, "
          f"peak memory {mem}")
    print(f"text: {result.text}")
    _write_json(args.json, result.to_json())
    if args.out:
        from reports.diffusion_export import export_zip

        print(f"export: {_writing('--out', args.out, lambda: export_zip(result, args.out))}")
    return 0


def cmd_compare(args) -> int:
    from models import generation as gen
    from models.loading import load

    _finite("threshold", args.threshold)
    opts = _load_options(args)
    prompts = gen.read_prompts_file(args.prompts)
    seeds = tuple(range(args.seeds))
    out = gen.compare(load(args.ar, opts), load(args.diffusion, opts), prompts,
                      length=args.length, steps=args.steps, block_length=args.block_length,
                      threshold=args.threshold, temperature=args.temperature, seeds=seeds)
    print("content = generated tokens before the first end-of-sequence/padding token; "
          "tok/s and tok/pass count content only; the autoregressive model stops at its EOS")
    print(f"{'paradigm':15s} {'model':16s} {'accuracy':>8s} {'seconds':>8s} {'tok/s':>8s} "
          f"{'nfe':>6s} {'tok/pass':>8s} {'mem MB':>7s} {'consist.':>8s}")
    for key in ("autoregressive", "diffusion"):
        r = out[key]
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.1%}"
        mem = "-" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.3f}"
        con = "-" if r["consistency"] is None else f"{r['consistency']:.1%}"
        print(f"{key:15s} {r['model']:16s} {acc:>8s} {r['mean_seconds']:8.4f} "
              f"{r['tokens_per_second']:8.1f} {r['mean_nfe']:6.1f} "
              f"{r['tokens_per_forward_pass']:8.2f} {mem:>7s} {con:>8s}")
    _write_json(args.json, out)
    return 0


def cmd_train_diffusion(args) -> int:
    from models.diffusion_training import train_diffusion

    facts = train_diffusion(args.base, Path(args.out), steps=args.steps, schedule=args.schedule,
                            grow_layers=args.grow_layers, seed=args.seed)
    print(json.dumps({k: v for k, v in facts.items() if not isinstance(v, (list, dict))}))
    return 0


def _add_load_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow models that run their own code (e.g. LLaDA)")
    p.add_argument("--allow-pickle-weights", action="store_true",
                   help="allow *.bin pickle weights (they can run code when loaded)")


def build_parser() -> Parser:
    from ui import limits
    parser = Parser(prog="dashboard.py", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)

    p = sub.add_parser("serve", help="serve the dashboard (the default)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public Gradio link")
    p.add_argument("--auth", metavar="USER:PASS", help="require a login")
    p.add_argument("--models", metavar="NAME,...", help="registry entries to offer")
    p.add_argument("--allow-custom-models", action="store_true",
                   help="let the page load any HuggingFace id or local folder")
    p.add_argument("--max-prompt-tokens", type=int, default=limits.DEFAULT_MAX_PROMPT_TOKENS,
                   help="longer prompts are truncated, with a notice (default %(default)s)")
    p.add_argument("--max-generation-length", type=int,
                   default=limits.DEFAULT_MAX_GENERATION_LENGTH,
                   help="the most tokens one generation may ask for (default %(default)s)")
    p.add_argument("--max-concurrent-jobs", type=int, default=limits.DEFAULT_MAX_CONCURRENT_JOBS,
                   help="jobs of one kind run at once; the rest wait in the queue "
                        "(default %(default)s)")
    _add_load_flags(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("models", help="list the model registry and what is available")
    p.add_argument("--json", metavar="PATH")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("analyze", help="layer and head metrics, predictions, attribution")
    p.add_argument("--model", action="append", required=True, help="registry name (repeatable)")
    p.add_argument("--prompt")
    p.add_argument("--out", metavar="ZIP", help="write the bundle")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--head-ablation", action="store_true",
                   help="per-head attribution by exact ablation instead of gradients")
    p.add_argument("--chat-template", action="store_true",
                   help="put the prompt in the model's chat template (for everything analysed)")
    p.add_argument("--seed", type=int, default=0)
    _add_load_flags(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("predict", help="fill-mask top-k, next-token top-k and continuation")
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat-template", action="store_true",
                   help="put the prompt in the model's chat template")
    p.add_argument("--json", metavar="PATH")
    _add_load_flags(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("generate", help="diffusion or autoregressive generation with a full trace")
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--length", type=int, required=True,
                   help="canvas positions: the most tokens to generate")
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default: length)")
    p.add_argument("--block-length", type=int, default=None)
    p.add_argument("--strategy", default="low_confidence",
                   choices=["low_confidence", "high_confidence", "low_entropy", "high_entropy",
                            "random"])
    p.add_argument("--threshold", type=float, default=None,
                   help="commit every position at least this confident (adaptive steps)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance")
    p.add_argument("--schedule", choices=["linear", "cosine", "exponential"], default=None,
                   help="schedule re-masking mode (RoBERTa-as-diffusion) instead of commit mode")
    p.add_argument("--sampling", choices=["greedy", "top_k", "nucleus"], default="greedy")
    p.add_argument("--ignore-eos", action="store_true",
                   help="autoregressive: write on past the end-of-sequence token up to --length "
                        "(by default it stops there; content tokens end there either way)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--out", metavar="ZIP", help="trace JSON, step GIF and HTML viewer")
    _add_load_flags(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("compare", help="autoregressive vs diffusion on a prompt set")
    p.add_argument("--ar", required=True)
    p.add_argument("--diffusion", required=True)
    p.add_argument("--prompts", required=True, metavar="FILE",
                   help="one prompt a line, optionally TAB and the expected answer")
    p.add_argument("--length", type=int, default=4)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--block-length", type=int, default=None)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seeds", type=int, default=1, help="seeds per prompt (consistency)")
    p.add_argument("--json", metavar="PATH")
    _add_load_flags(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("train-diffusion", help="fine-tune a masked LM into a diffusion LM")
    p.add_argument("--base", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--schedule", default="continuous",
                   choices=["continuous", "linear", "cosine", "exponential"])
    p.add_argument("--grow-layers", type=int, default=0,
                   help="depth up-scaling: insert copies of existing layers first")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_diffusion)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "-v", "--verbose"):
        argv = ["serve", *argv]
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            args = parser.parse_args(["serve", *argv])
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - user errors from the library
        from models.errors import UserError

        if isinstance(exc, UserError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
