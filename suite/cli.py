"""`periln`: one console script, one verb per journey. Errors in user input print one line per
problem ("periln: error: ...") and exit 2; a traceback means a bug."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from models import ConfigError

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Handler] = {}


def command(name: str, help: str, example: str) -> Callable:
    """Register a verb: the decorated function adds its arguments to the parser it is given and
    returns the handler."""

    def wrap(setup: Callable[[argparse.ArgumentParser], Handler]) -> Callable:
        COMMANDS[name] = (help, example, setup)
        return setup

    return wrap


@command("train", "train one run in this process (CPU or GPU)",
         "periln train --config sweeps/train_tiny.yaml train.max_steps=100 placement=peri_ln")
def _train(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--config", help="run config YAML (RunConfig fields); omitted: built-in defaults")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. lr=3e-3")

    def run(args: argparse.Namespace) -> int:
        from suite.config import load_run_config
        from suite.train import train

        cfg = load_run_config(args.config, args.overrides)
        result = train(cfg)
        print(f"{result['key']}: step {result['step']}, train loss {result['train_loss']:.4f}, "
              f"eval loss {result['val_loss']:.4f}, {result['tokens_per_s'] or 0:,.0f} tokens/s; "
              f"run directory {cfg.run_dir}")
        return 0

    return run


@command("demo", "the end-to-end demo on embedded defaults (CPU or one GPU, no internet)", "periln demo")
def _demo(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--out", default="results/demo", help="where the demo's runs go")

    def run(args: argparse.Namespace) -> int:
        from suite.config import load_run_config
        from suite.train import train

        cfg = load_run_config(None, [f"out_dir={args.out}/runs", "sweep=demo", "placement=peri_ln",
                                     "lr=3e-3", "train.max_steps=200"])
        result = train(cfg)
        print(f"demo: {result['key']} trained {result['step']} steps in {result['seconds']:.0f} s, "
              f"eval loss {result['val_loss']:.3f}; run directory {cfg.run_dir}")
        return 0

    return run


@command("placements", "list the registered placements with their equations", "periln placements")
def _placements(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--markdown", action="store_true", help="a Markdown table (the README's)")

    def run(args: argparse.Namespace) -> int:
        from models.placements import load_all

        registry = load_all()
        if args.markdown:
            print("| placement | equation | source |\n|---|---|---|")
        for name, cls in sorted(registry.items()):
            alias = f" (alias of {cls.name})" if name != cls.name else ""
            if args.markdown:
                print(f"| `{name}`{alias} | {cls.equation()} | {cls.source} |")
            else:
                print(f"{name}{alias}\n    {cls.equation()}\n    source: {cls.source}")
        return 0

    return run


@command("sizes", "the model sizes with their dimensions and parameter counts", "periln sizes")
def _sizes(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--vocab", type=int, default=100277, help="vocabulary for the total (cl100k_base)")

    def run(args: argparse.Namespace) -> int:
        from models import SIZES, ModelConfig
        from models.sizes import NOMINAL
        from models.transformer import Transformer

        print("Dimensions are ours: the paper publishes only the parameter counts. Non-embedding = "
              "without token embedding and LM head (pre_ln, untied).")
        print(f"{'size':<10}{'d_model':>8}{'layers':>7}{'heads':>6}{'d_ff':>6}{'non-emb':>10}"
              f"{'nominal':>9}{'off':>7}{'total':>10}")
        for name, dims in SIZES.items():
            cfg = ModelConfig(vocab_size=args.vocab, **dims)
            with _meta_device():
                model = Transformer(cfg)
            n, total = model.num_params(True), model.num_params(False)
            nominal = NOMINAL[name]
            off = f"{(n / nominal - 1) * 100:+.1f}%" if nominal else "-"
            print(f"{name:<10}{cfg.d_model:>8}{cfg.n_layers:>7}{cfg.n_heads:>6}{cfg.ff_dim:>6}"
                  f"{_human(n):>10}{_human(nominal) if nominal else '-':>9}{off:>7}{_human(total):>10}")
        return 0

    return run


def _meta_device():
    import torch

    return torch.device("meta")  # shapes only: no memory for the 3.2b weights


def _human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(int(n))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="periln", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    handlers = {}
    for name, (help, example, setup) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=f"{help}\n\nexample:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        handlers[name] = setup(p)
    parser.set_defaults(_handlers=handlers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._handlers[args.verb](args)
    except ConfigError as err:
        for line in str(err).splitlines():
            print(f"periln: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
