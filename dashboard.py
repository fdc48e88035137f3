"""Transformer analysis dashboard: the Gradio app and the same work headless.

    python dashboard.py                 # serve the app on 0.0.0.0:7860
    python dashboard.py models --json models.json
    python dashboard.py analyze --model tiny-gpt2 --prompt "the capital of japan is" --out b.zip
    python dashboard.py predict --model tiny-bert --prompt "the capital of japan is [MASK]."

Every subcommand prints one clear line and exits 2 on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import types
import typing
from pathlib import Path

from models.common import UserError, atomic_write, check_text, file_safe
from models.loading import LoadOptions
from ui.config import (
    AnalyzeArgs,
    AppConfig,
    CompareArgs,
    GenerateArgs,
    ModelsArgs,
    PredictArgs,
    TrainDiffusionArgs,
)

log = logging.getLogger("dashboard")


class CliError(Exception):
    """Bad command-line input (exit 2): a one-line message, like UserError's."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise CliError(f"{message} (see `python dashboard.py {self.prog.split()[-1]} --help`)"
                       if " " in self.prog else f"{message} (see --help)")


# ----------------------------------------------------------------------------- flags from configs


def _base_type(tp):
    """(the scalar type, is a list) of an annotation like int, float | None, list[str] | None."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return _base_type(args[0])
    if typing.get_origin(tp) is list:
        return (args[0] if args else str), True
    return tp, False


def add_flags(parser: argparse.ArgumentParser, cls, exclude: tuple[str, ...] = ()) -> None:
    """One flag per field of the dataclass `cls` (skipping `exclude` and fields marked
    cli=False): --field-name, its type from the annotation, its default, help and choices from
    the field's metadata. A bool is a switch; a list is repeatable or split on a separator."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if f.name in exclude or meta.get("cli") is False:
            continue
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        kw = {"dest": f.name, "help": meta.get("help")}
        default = f.default if f.default is not dataclasses.MISSING else None
        tp, many = _base_type(hints[f.name])
        if tp is bool:
            kw["action"] = "store_true"
        elif many and meta.get("split"):
            kw.update(type=str, metavar=meta.get("metavar"))
        elif many:
            kw.update(action="append", type=tp, metavar=meta.get("metavar"))
        else:
            kw.update(type=tp, metavar=meta.get("metavar"), choices=meta.get("choices"))
        if meta.get("required"):
            kw["required"] = True
        else:
            kw["default"] = default
        parser.add_argument(flag, **kw)


def from_args(cls, args: argparse.Namespace, **extra):
    """The dataclass `cls` filled from parsed flags (split lists split, floats checked finite)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        sep = f.metadata.get("split")
        if sep and isinstance(value, str):
            value = [v.strip() for v in value.split(sep) if v.strip()] or None
        if isinstance(value, float) and not math.isfinite(value):
            raise CliError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        if _base_type(hints[f.name])[0] is str and isinstance(value, str):
            _text(f.name.replace("_", "-"), value)
        values[f.name] = value
    return cls(**{**values, **extra})


def _write_json(path: str | None, data) -> None:
    if not path:
        return
    try:
        atomic_write(path, json.dumps(data, indent=2, default=_json_default))
    except OSError as exc:
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
    if value is not None:
        try:
            check_text(value)
        except UserError:
            raise CliError(f"--{name} is not valid UTF-8 text; check the terminal's encoding or "
                           "pass the text in a UTF-8 file") from None


# ----------------------------------------------------------------------------- subcommands

def cmd_models(args: ModelsArgs, load_options: LoadOptions) -> int:
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


def cmd_analyze(args: AnalyzeArgs, load_options: LoadOptions) -> int:
    from analysis.result import LAYER_COLUMNS
    from analysis.run import analyze, continuation_of, summary_json
    from models.loading import load
    from models.predictions import check_top_k

    check_top_k(args.top_k)
    if args.dataset is not None:
        if args.prompt is not None:
            raise CliError("give --prompt TEXT or --dataset PATH_OR_ID, not both")
        return analyze_dataset_cli(args, load_options)
    if args.prompt is None or not args.prompt.strip():
        raise CliError("give a non-empty --prompt TEXT or a --dataset")
    set_threads_for(args.model, load_options)
    result = analyze(args.model, [args.prompt], load=lambda n: load(n, load_options),
                     top_k=args.top_k, ablation=args.head_ablation, seed=args.seed,
                     chat_template=args.chat_template)
    continuations = {r.name: continuation_of(load(r.name, load_options), r, seed=args.seed)
                     for r in result.results}  # a generation, asked for after the analysis
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


def analyze_dataset_cli(args: AnalyzeArgs, load_options: LoadOptions) -> int:
    """`analyze --dataset`: every model over the texts; under torchrun the processes share the
    texts and process 0 prints and writes."""
    from analysis.dataset import analyze_dataset
    from models.loading import load
    from reports.dataset_report import summary_json, write_dataset_bundle

    set_threads_for(args.model, load_options)

    def progress(done, total, tps, left):
        of = f"/{total:,}" if total else ""
        eta = f", about {left:,.0f} s left" if left is not None else ""
        print(f"\r  {done:,}{of} texts, {tps:,.0f} tokens/s{eta}   ", end="", file=sys.stderr,
              flush=True)

    results = []
    for name in dict.fromkeys(args.model):
        r = analyze_dataset(load(name, load_options), args.dataset, split=args.split,
                            column=args.column, limit=args.limit, batch_size=args.batch_size,
                            max_tokens=args.max_tokens, sample_tokens=args.sample_tokens,
                            skip_special=args.skip_special, seed=args.seed,
                            resume=(str(Path(args.resume) / file_safe(name))
                                    if args.resume else None),
                            progress=progress if sys.stderr.isatty() else None)
        if r is None:  # another torchrun process: process 0 reports
            continue
        results.append(r)
        _print_dataset(r)
    if not results:
        return 0
    _write_json(args.json, summary_json(results))
    if args.out:
        path = _writing("--out", args.out, lambda: write_dataset_bundle(results, args.out))
        print(f"bundle: {path}")
    return 0


def _print_dataset(r) -> None:
    print(f"{r.model}: {r.texts:,} texts, {r.tokens:,} tokens, {r.processes} process(es), "
          f"{r.seconds:.1f} s ({r.tokens_per_second:,.0f} tokens/s)")
    for notice in r.notices:
        print(f"notice ({r.model}): {notice}")
    print("  layer  erank     PR  pca95  twonn[95%]              act_ent/text  dataset_ent")
    for s in r.summary.layers:
        tw = s.token_sample.get("intrinsic_dim_twonn")
        ae = s.per_text.get("activation_entropy")
        twonn = ("-" if tw is None or tw.value is None else
                 f"{tw.value:.2f} [{tw.ci_low:.2f}, {tw.ci_high:.2f}]")
        act = "-" if ae is None or ae.mean is None else f"{ae.mean:.3f} ± {ae.std:.3f}"
        print(f"  {s.layer:5d} {_cell(s.all_tokens.get('effective_rank'))} "
              f"{_cell(s.all_tokens.get('participation_ratio'))} "
              f"{_cell(s.all_tokens.get('intrinsic_dim_pca95'))}  {twonn:22s}  {act:13s} "
              f"{_cell(s.dataset_entropy)}")


def _cell(v) -> str:
    if v is None:
        return "      -"
    return f"{v:7.3f}" if isinstance(v, float) else f"{v:7d}"


def cmd_predict(args: PredictArgs, load_options: LoadOptions) -> int:
    from models.loading import load
    from models.predictions import predict

    if args.max_new_tokens < 1:
        raise CliError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    set_threads_for([args.model], load_options)
    out = predict(load(args.model, load_options), args.prompt, top_k=args.top_k,
                  max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                  top_p=args.top_p, seed=args.seed, chat_template=args.chat_template)
    for notice in out.get("notices", []):
        print(f"notice: {notice}")
    for p in out["predictions"]:
        print(f"{p['probability']:.4f}  {p['token']}")
    print(f"text: {out['text']}")
    _write_json(args.json, out)
    return 0


def cmd_serve(config: AppConfig, load_options: LoadOptions) -> int:
    from ui.app import serve

    if config.auth is not None and (":" not in config.auth or config.auth.startswith(":")):
        raise CliError("--auth must look like USER:PASS")
    set_threads_for(config.models, load_options)
    serve(config)
    return 0


def cmd_generate(args: GenerateArgs, load_options: LoadOptions) -> int:
    from models import generation as gen
    from models.loading import load

    loaded = load(args.model, load_options)
    if loaded.task == "causal":
        if args.steps not in (None, args.length) or args.block_length or args.threshold:
            raise CliError(f"'{args.model}' is autoregressive: --steps, --block-length and "
                           "--threshold apply to diffusion models only")
        if args.cache != "none" or args.early_stop:
            raise CliError(f"'{args.model}' is autoregressive: it always uses its exact KV cache "
                           "and stops at its end-of-sequence token; --cache prefix|dual and "
                           "--early-stop are for masked diffusion models (e.g. tiny-diffusion "
                           "with --block-length)")
        result = gen.autoregressive_generate(loaded, args.prompt, args.length,
                                             temperature=args.temperature, top_k=args.top_k,
                                             top_p=args.top_p, seed=args.seed,
                                             stop_at_eos=not args.ignore_eos)
    elif args.ignore_eos:
        raise CliError("--ignore-eos applies to autoregressive models only")
    elif args.schedule:
        if args.cache != "none" or args.early_stop:
            raise CliError("--cache and --early-stop serve the commit mode (blocks, committed "
                           "tokens never change); --schedule re-masks every position each step: "
                           "drop --schedule, or use --cache none without --early-stop")
        result = gen.remask_generate(loaded, args.prompt, args.length, args.steps or args.length,
                                     schedule=args.schedule, sampling=args.sampling,
                                     top_k=args.top_k or 50, top_p=args.top_p or 0.9,
                                     temperature=args.temperature or 1.0, seed=args.seed)
    else:
        result = gen.diffusion_generate(loaded, args.prompt, args.length, steps=args.steps,
                                        block_length=args.block_length, strategy=args.strategy,
                                        threshold=args.threshold, temperature=args.temperature,
                                        top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                        cfg_scale=args.cfg_scale, cache=args.cache,
                                        early_stop=args.early_stop)
    mem = ("n/a: " + result.peak_memory_note if result.peak_memory_mb is None
           else f"{result.peak_memory_mb:.3f} MB")
    print(f"{result.paradigm}: {result.generated_tokens} content tokens of {result.positions} "
          f"positions in {result.steps} steps, nfe {result.nfe} "
          f"({result.tokens_per_forward_pass:.2f} content tokens per forward pass), "
          f"{result.seconds:.3f} s, {result.tokens_per_second:.1f} content tokens/s, "
          f"peak memory {mem}")
    if result.cache in ("prefix", "dual"):
        full, read = result.kv_refreshes, result.nfe - result.kv_refreshes
        print(f"KV cache {result.cache}: {full} full pass{'es' * (full != 1)} rebuilt it, "
              f"{read} pass{'es' * (read != 1)} read it (approximate)")
    if result.noise == "uniform":
        revised = sum(len(r.revised or []) for r in result.trace)
        print(f"uniform noise, entropy-bound sampler, blocks of {result.block_length}: "
              f"{result.encoder_passes} encoder pass{'es' * (result.encoder_passes != 1)} wrote "
              f"the KV cache; {revised} time{'s' * (revised != 1)} an accepted token changed "
              "later")
    if result.stop_note:
        print(result.stop_note)
    print(f"text: {result.text}")
    _write_json(args.json, result.to_json())
    if args.out:
        from reports.diffusion_export import export_zip

        print(f"export: {_writing('--out', args.out, lambda: export_zip(result, args.out))}")
    return 0


def cmd_compare(args: CompareArgs, load_options: LoadOptions) -> int:
    from models import generation as gen
    from models.loading import load

    opts = load_options
    prompts = gen.read_prompts_file(args.prompts)
    seeds = tuple(range(args.seeds))
    quality = None
    if args.fluency_model or args.relevance:
        from models.quality import RELEVANCE_MODEL

        quality = gen.Quality(
            fluency=load(args.fluency_model, opts) if args.fluency_model else None,
            relevance=load(RELEVANCE_MODEL, opts) if args.relevance else None)
    out = gen.compare(load(args.ar, opts), load(args.diffusion, opts), prompts,
                      length=args.length, steps=args.steps, block_length=args.block_length,
                      threshold=args.threshold, temperature=args.temperature, seeds=seeds,
                      cache=args.cache, early_stop=args.early_stop, ar_length=args.ar_length,
                      ar_temperature=args.ar_temperature, ar_top_p=args.ar_top_p,
                      reference=not args.no_reference, quality=quality)
    print("content = generated tokens before the first end-of-sequence/padding token; "
          "tok/s and tok/pass count content only; the autoregressive model stops at its EOS; "
          "agree = same text as the uncached one-token-per-step run; ppl = fluency "
          "(perplexity), rel = relevance (see the Details tab)")
    print(f"{'paradigm':15s} {'model':16s} {'accuracy':>8s} {'seconds':>8s} {'tok/s':>8s} "
          f"{'nfe':>6s} {'tok/pass':>8s} {'mem MB':>7s} {'consist.':>8s} {'agree':>6s} "
          f"{'ppl':>7s} {'rel':>6s}")

    def cell(v, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for key in ("autoregressive", "diffusion"):
        r = out[key]
        print(f"{key:15s} {r['model']:16s} {cell(r['accuracy'], '.1%'):>8s} "
              f"{r['mean_seconds']:8.4f} {r['tokens_per_second']:8.1f} {r['mean_nfe']:6.1f} "
              f"{r['tokens_per_forward_pass']:8.2f} {cell(r['peak_memory_mb'], '.3f'):>7s} "
              f"{cell(r['consistency'], '.1%'):>8s} {cell(r['agreement'], '.0%'):>6s} "
              f"{cell(r['fluency_perplexity'], '.2f'):>7s} {cell(r['relevance'], '.3f'):>6s}")
    _write_json(args.json, out)
    return 0


def cmd_train_diffusion(args: TrainDiffusionArgs, load_options: LoadOptions) -> int:
    from models.diffusion_training import train_diffusion

    facts = train_diffusion(args.base, Path(args.out), steps=args.steps, schedule=args.schedule,
                            grow_layers=args.grow_layers, seed=args.seed)
    print(json.dumps({k: v for k, v in facts.items() if not isinstance(v, (list, dict))}))
    return 0


def set_threads_for(names: list[str] | None, load_options: LoadOptions) -> None:
    """Thread counts, set once for the process from the largest model it will run (read from
    safetensors headers, no weights loaded): one thread for small models (see
    models.loading.set_threads), every core otherwise."""
    from models.loading import set_threads
    from models.registry import default_models, parameter_count, resolve

    largest = 0
    for name in names or default_models():
        try:
            largest = max(largest, parameter_count(resolve(name)) or 10**12)
        except UserError:
            largest = max(largest, 10**12)  # unknown here: assume a large model
    set_threads(largest)


# (command, help, its config dataclass, what load flags it takes)
COMMANDS = {
    "serve": (cmd_serve, "serve the dashboard (the default)", "AppConfig", ("revision",)),
    "models": (cmd_models, "list the model registry and what is available", ModelsArgs, None),
    "analyze": (cmd_analyze, "layer and head metrics, predictions, attribution",
                AnalyzeArgs, ()),
    "predict": (cmd_predict, "fill-mask top-k, next-token top-k and continuation",
                PredictArgs, ()),
    "generate": (cmd_generate, "diffusion or autoregressive generation with a full trace",
                 GenerateArgs, ()),
    "compare": (cmd_compare, "autoregressive vs diffusion on a prompt set", CompareArgs, ()),
    "train-diffusion": (cmd_train_diffusion, "fine-tune a masked LM into a diffusion LM",
                        TrainDiffusionArgs, None),
}


def _config_class(ref):
    return AppConfig if ref == "AppConfig" else ref


def build_parser() -> Parser:
    """Flags from the config dataclasses; `serve` is the parser's default (its flags are also
    accepted without a subcommand: `python dashboard.py --port 7861`)."""
    parser = Parser(prog="dashboard.py", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    add_flags(parser, AppConfig)
    parser.set_defaults(command="serve")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    for name, (_fn, help_text, ref, load_exclude) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        add_flags(p, _config_class(ref))
        if load_exclude is not None:
            add_flags(p, LoadOptions, exclude=load_exclude + (
                ("trust_remote_code", "allow_pickle", "device", "dtype") if name == "serve" else ()))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        fn, _help, ref, _load = COMMANDS[args.command]
        cls = _config_class(ref)
        load_options = from_args(LoadOptions, args)
        return int(fn(from_args(cls, args), load_options) or 0)
    except (CliError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
