"""``selfsup`` command line: thin parsing on top of the library's layers."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

from selfsup.errors import ConfigError, SelfsupError
# the names alone: the readers and writers (selfsup.run_dir) load with the commands that use them
from selfsup.run_files import (
    BO_CACHE_DIR, ENCODER_SPEC_FILE, EVAL_FILE, FINETUNE_FILE, REPORT_FILE,
)


def _pretrain_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder with a self-supervised method",
                       description="Pretrain an encoder; writes config, metrics, checkpoints and "
                                   "the encoder to --out.")
    p.add_argument("--method", help="method name (see `selfsup list`); default simclr")
    p.add_argument("--dataset", help="dataset name (see `selfsup list`), a folder of images, an "
                   ".npy/.npz file, a FASTA/FASTQ file, a .txt file (one text per line) or a "
                   ".csv/.tsv table (plain or .gz)")
    p.add_argument("--data-dir", help="where the dataset's files are (else $SELFSUP_DATA, else the "
                                      "dataset's standard location)")
    p.add_argument("--backbone", help="backbone name, or torchvision:NAME / timm:NAME")
    p.add_argument("--init", metavar="PATH",
                   help="start the backbone from these weights: a .safetensors or PyTorch "
                        "state-dict file of its keys, or a selfsup run directory (its encoder); "
                        "never downloaded")
    p.add_argument("--epochs", type=int)
    p.add_argument("--budget", type=budget_minutes, metavar="TIME",
                   help="train for this wall time instead of --epochs, e.g. 20m, 90s, 1.5h (a bare "
                        "number is minutes): the step count is measured on the first steps and "
                        "saved as train.total_steps (evaluation not counted)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--out", help="run directory (default runs/<method>-<dataset>)")
    p.add_argument("--config", help="YAML config file; flags and --set override it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=0.5 (repeatable)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with its saved config "
                        "(the flags and --set change it, e.g. --epochs to train longer)")
    p.add_argument("--evaluate", action="store_true", help="evaluate and report after training")


def budget_minutes(text: str) -> float:
    """``--budget``'s value in minutes: ``20m``, ``90s``, ``1.5h`` or a bare number of minutes."""
    units = {"s": 1 / 60, "m": 1.0, "h": 60.0}
    number, unit = (text[:-1], text[-1].lower()) if text[-1:].isalpha() else (text, "m")
    try:
        minutes = float(number) * units[unit]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: write e.g. 20m, 90s or 1.5h") from None
    if not minutes > 0 or minutes == float("inf"):
        raise argparse.ArgumentTypeError(f"the budget must be a positive time, got {text!r}")
    return minutes


def _add_run_dir(p) -> None:
    p.add_argument("run_dir", help="a run directory written by `selfsup pretrain`")


def _finetune_parser(sub) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune the encoder with a fraction of the labels (vs from scratch)",
        description="Fine-tune a run's encoder (image or sequence) with a new linear head on a "
                    "stratified fraction of the training labels and report test top-1 over "
                    "seeds; with --compare-scratch "
                    "also the same backbone from a random init (the baseline). Results are merged "
                    f"into RUN/{FINETUNE_FILE}; `selfsup report RUN` draws the label-efficiency "
                    "plot.")
    _add_run_dir(p)
    p.add_argument("--dataset", help="fine-tune on another labelled dataset than the pretraining "
                                     "one; needed after an unlabelled corpus (uniprot-go: "
                                     "swissprot-loc; 16s-rrna: 16s-reads)")
    p.add_argument("--data-dir")
    p.add_argument("--labels-fraction", metavar="F[,F...]",
                   help="fraction(s) of the training labels, each in (0, 1], e.g. 0.01,0.1,1.0 "
                        "(default: the run's eval.label_fractions)")
    p.add_argument("--mode", default="full", metavar="MODE[,MODE]",
                   help="full (backbone and head train; default) or frozen (only the head trains); "
                        "full,frozen runs both")
    inits = p.add_mutually_exclusive_group()
    inits.add_argument("--scratch", action="store_true",
                       help="only the baseline: the same backbone from a random init")
    inits.add_argument("--compare-scratch", action="store_true",
                       help="the pretrained encoder and the from-scratch baseline")
    p.add_argument("--seeds", type=int, help="runs per fraction, each on its own label subset (default 3)")
    p.add_argument("--epochs", type=int, help="epochs at least (default 10; small fractions run more "
                                               "epochs to reach min_steps, default 300)")
    p.add_argument("--batch-size", type=int, help="default 256, at most the labelled subset")
    p.add_argument("--lr", type=float, help="the head's AdamW learning rate (default 1e-2); the "
                                            "backbone's is backbone_lr_scale times it")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help=f"results file (default RUN/{FINETUNE_FILE}); entries are merged")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any fine-tuning setting, e.g. --set layer_decay=0.75, --set augment=false, "
                        "--set backbone_lr_scale=0.2, --set min_steps=500 (repeatable)")


def _bo_parser(sub) -> None:
    p = sub.add_parser(
        "bo", help="Bayesian optimisation: choose the next candidates to measure",
        description="Fit a Gaussian process to the measured candidates and propose the next batch "
                    "of the pool to measure (qEI, qUCB or Thompson sampling, with BoTorch). Writes "
                    "a CSV: sequence, predicted_mean, predicted_std, acquisition.")
    p.add_argument("--pool", required=True, help="candidate sequences: a FASTA/FASTQ file "
                                                 "(.fasta, .fa, .fastq, …, optionally .gz), or "
                                                 "a CSV with a 'sequence' column")
    p.add_argument("--measured", required=True,
                   help="CSV with 'sequence' and 'value' columns (higher is better); each sequence "
                        "must be in the pool")
    p.add_argument("--featurizer", default="onehot",
                   help="onehot (default), descriptors, or a protein run directory (selfsup "
                        "pretrain --method mlm ...) whose encoder embeds the candidates; its "
                        f"embeddings are cached in RUN/{BO_CACHE_DIR}")
    p.add_argument("--sites", metavar="I[,I...]", help="1-based positions to featurise (default: "
                                                      "where the pool's sequences differ)")
    p.add_argument("--pooling", default="mean", choices=["mean", "sites"],
                   help="with a run directory: mean of the residue embeddings over the whole "
                        "sequence (default) or over the sites")
    p.add_argument("--q", type=int, default=96, help="batch size: candidates to propose (default 96)")
    p.add_argument("--acquisition", default="qei", choices=["qei", "qucb", "thompson"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output CSV")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfsup", description="Self-supervised pretraining with collapse diagnostics and "
                                    "label-efficiency evaluation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _pretrain_parser(sub)

    p = sub.add_parser("evaluate", help="k-NN and linear probes at 1/10/100%% labels vs baselines",
                       description="Evaluate a run's frozen encoder: weighted k-NN and linear probes "
                                   "at several label fractions, against raw pixels and a random-init "
                                   f"encoder. Writes RUN/{EVAL_FILE} and prints the table.")
    _add_run_dir(p)
    p.add_argument("--dataset", help="evaluate on another labelled dataset than the pretraining one")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-baselines", action="store_true", help="skip raw-pixel and random-init baselines")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override eval settings, e.g. --set eval.seeds=5")

    p = sub.add_parser("embed", help="write encoder features of a dataset split, with each item's id",
                       description="Embed every image or sequence of a split with the run's "
                                   "encoder; each row carries its item's id (file path, record "
                                   "id, NAME:ROW) and label.")
    _add_run_dir(p)
    p.add_argument("--dataset")
    p.add_argument("--data-dir")
    p.add_argument("--split", default="test", help="train, test (default) or all")
    p.add_argument("--out", required=True,
                   help="output file: .parquet (id, label, embedding), .csv (id, label, f0...) or "
                        ".npy ((N, D) float32, with NAME.ids.tsv beside it)")
    p.add_argument("--per-token", action="store_true",
                   help="sequence runs: one vector per token of each sequence (per residue, "
                        "base or word piece; no specials, no padding), to .parquet or .npz")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("export", help="write a run's encoder for other tools, with a model card",
                       description="Export the run's encoder: torchscript (loads with "
                                   "torch.jit.load alone) or onnx (onnxruntime), each checked "
                                   "against selfsup's encoder, or "
                                   f"safetensors (selfsup's keys and {ENCODER_SPEC_FILE}), with "
                                   "a model card (README.md).")
    _add_run_dir(p)
    p.add_argument("--format", required=True, choices=["torchscript", "onnx", "hf", "safetensors"])
    p.add_argument("--out", required=True, help="the folder to write")

    _finetune_parser(sub)
    _bo_parser(sub)

    p = sub.add_parser("report", help=f"write plots and {REPORT_FILE} for a run",
                       description=f"Write PNG plots and {REPORT_FILE} into the run directory.")
    _add_run_dir(p)

    sub.add_parser("list", help="list methods, backbones, datasets, view recipes, modalities and "
                                "tokenisers",
                   description="List the registered methods, backbones, datasets, view recipes, "
                               "modalities and tokenisers.")

    p = sub.add_parser("demo", help="SimCLR on Fashion-MNIST, then evaluation and report",
                       description="The main job: pretrain SimCLR on Fashion-MNIST with a preset "
                                   "chosen by device (a small CNN on CPU, ResNet-18 on GPU), then "
                                   "evaluate and report.")
    p.add_argument("--out", help="run directory (default runs/demo-<time>)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return parser


def _pretrain_config(args):
    from selfsup.config import Config, from_dict, set_key
    from selfsup.run_config import load_config

    flags = []
    for key, value in (("method.name", args.method), ("data.dataset", args.dataset),
                       ("data.data_dir", args.data_dir), ("backbone.name", args.backbone),
                       ("backbone.init", getattr(args, "init", None)),
                       ("train.epochs", args.epochs), ("train.budget_minutes", args.budget),
                       ("train.batch_size", args.batch_size),
                       ("train.device", args.device), ("out", args.out)):
        if value is not None:
            flags.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    if args.resume:
        if not args.out:
            raise SelfsupError("--resume needs --out DIR: the run directory to continue")
        if args.config:
            raise SelfsupError("--resume continues the config saved in the run directory; change "
                               "it with --set KEY=VALUE (or the flags), not --config")
        # The run continues where it is now, not where config.yaml says it was written (a copied
        # or moved run would otherwise train into the original); the flags override as --set does
        # (e.g. --epochs 20 extends a run).
        from selfsup.run_dir import RunDir

        data = RunDir(args.out).load_config().to_dict()
        for item in flags + args.set:
            set_key(data, item)
        return from_dict(Config, data)
    config = load_config(args.config, flags + args.set)
    if config.out == Config().out:  # nobody chose a run dir: name it after method and data
        dataset = Path(config.data.dataset).name or "data"
        config.out = f"runs/{config.method['name']}-{dataset}"
    return config


def cmd_pretrain(args) -> int:
    from selfsup.train import pretrain

    config = _pretrain_config(args)
    run_dir = pretrain(config, resume=args.resume)
    if not _is_main_process():  # under torchrun, rank 0 alone reports and evaluates
        return 0
    print(f"run written to {run_dir}")
    if args.evaluate:
        _evaluate_and_report(run_dir, device=config.train.device)
    return 0


def _evaluate_and_report(run_dir, device: str = "auto", **kwargs) -> dict:
    from selfsup.evaluate.run import evaluate_run
    from selfsup.report import format_eval_table, format_verdict, write_report

    result = evaluate_run(run_dir, device=device, **kwargs)
    print(format_eval_table(result))
    verdict = format_verdict(result)
    if verdict:
        print("the encoder, in points of accuracy:\n" + verdict)
    report = write_report(run_dir)
    print(f"report: {report}")
    return result


def cmd_evaluate(args) -> int:
    from selfsup.config import EvalConfig, from_dict, set_key

    eval_config = None
    for item in args.set:
        if not item.startswith("eval."):  # anything else would be silently ignored
            raise ConfigError(f"--set {item}: evaluate takes eval.* settings (e.g. "
                              "eval.knn_k=20); the rest of the run's config is fixed by training")
    if args.set:
        from selfsup.run_dir import RunDir

        data = {"eval": RunDir(args.run_dir).load_config().to_dict()["eval"]}
        for item in args.set:
            set_key(data, item)
        eval_config = from_dict(EvalConfig, data["eval"], "eval")
    _evaluate_and_report(args.run_dir, device=args.device, dataset=args.dataset,
                         data_dir=args.data_dir, eval_config=eval_config,
                         baselines=False if args.no_baselines else None)
    return 0


def cmd_export(args) -> int:
    from selfsup.apps.export import export_run

    for path in export_run(args.run_dir, args.format, args.out):
        print(f"wrote {path}")
    return 0


def cmd_embed(args) -> int:
    from selfsup.apps.embeddings import embed_run, ids_file

    feats = embed_run(args.run_dir, args.dataset, args.split, args.out, args.data_dir, args.device,
                      per_token=args.per_token)
    beside = f" (ids in {ids_file(Path(args.out))})" if args.out.lower().endswith(".npy") else ""
    rows = "token vectors" if args.per_token else "rows"
    print(f"wrote {args.out}: {feats.shape[0]} {rows} × {feats.shape[1]} float32{beside}")
    return 0


def _comma_list(text: str, convert, what: str) -> list:
    try:
        return [convert(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a comma-separated list, e.g. 0.01,0.1,1.0") from None


def cmd_finetune(args) -> int:
    from selfsup.evaluate.finetune import finetune_run, settings_from
    from selfsup.run_dir import RunDir
    from selfsup.report.finetune_report import format_finetune_table

    # the run's own finetune section (its config.yaml) under the flags and --set
    settings = settings_from({"seeds": args.seeds, "epochs": args.epochs,
                              "batch_size": args.batch_size, "lr": args.lr}, args.set,
                             RunDir(args.run_dir).load_config().finetune)
    fractions = (None if args.labels_fraction is None
                 else _comma_list(args.labels_fraction, float, "--labels-fraction"))
    inits = (["scratch"] if args.scratch else
             ["pretrained", "scratch"] if args.compare_scratch else ["pretrained"])
    results = finetune_run(args.run_dir, fractions, _comma_list(args.mode, str.strip, "--mode"), inits,
                           settings, args.dataset, args.data_dir, args.device, args.out)
    print(format_finetune_table(results))
    return 0


def cmd_bo(args) -> int:
    from selfsup.apps.bo import propose_from_files

    sites = None if args.sites is None else _comma_list(args.sites, int, "--sites")
    proposal = propose_from_files(args.pool, args.measured, args.featurizer, args.q,
                                  args.acquisition, args.out, args.seed, sites, args.pooling)
    print(f"wrote {args.out}: {len(proposal.indices)} candidates by {args.acquisition}")
    return 0


def cmd_report(args) -> int:
    from selfsup.report import write_report

    print(f"report: {write_report(args.run_dir)}")
    return 0


def cmd_list(args) -> int:
    from selfsup import catalog
    from selfsup.registry import (
        BACKBONES, DATASETS, METHODS, MODALITIES, TOKENIZERS, VIEW_RECIPES,
    )

    catalog.load()  # the built-ins and the plugins of installed packages
    for title, registry in (("methods", METHODS), ("backbones", BACKBONES), ("datasets", DATASETS),
                            ("view recipes", VIEW_RECIPES), ("modalities", MODALITIES),
                            ("tokenisers", TOKENIZERS)):
        print(f"{title}:")
        width = max(map(len, registry.names()), default=0) + 2
        for name in registry.names():
            print(f"  {name:<{width}}{registry.help(name)}")
    print("  (backbones also: torchvision:NAME, timm:NAME when those libraries are installed;\n"
          "   datasets also: a folder of images, an .npy or .npz file)")
    from selfsup.recipes import describe_recipes

    print("default recipes (sequence data, no --method; bench/sequence_budget.py's winners):")
    for line in describe_recipes():
        print(f"  {line}")
    return 0


def demo_overrides(cuda: bool) -> list[str]:
    """The demo's preset: ResNet-18 on a GPU; a small CNN and a short schedule on a CPU."""
    if cuda:
        return ["backbone.name=resnet18", "train.epochs=100", "train.batch_size=512",
                "optim.name=lars", "optim.lr=0.3", "optim.warmup_epochs=5",
                "optim.weight_decay=1e-6", "method.temperature=0.2", "train.compile=true"]
    from selfsup.train.device import cpu_has_native_bf16

    # CPU: issue 17's study (bench/image_budget.py; docs/benchmarks.md). The step is the CNN's
    # forward and backward passes, so what pays is a network whose few FLOPs keep what the probes
    # need: the whole 4 × 4 map of a 64-wide last stage as the feature (1,024-d; global pooling
    # threw away the layout that tells garments apart: +2.8 points of k-NN; a wider last stage
    # added nothing and slowed the evaluation), middle stages 128 and 256 wide (+0.2 to 0.3
    # k-NN at 1.4× the step), a 1,024-wide projector, τ 0.1 and a linear decay to zero (budgeted
    # training). Batch 128: at equal images 64 learned the same and 256 less. bf16 where the CPU
    # has it: 1.35× the steps. 8 epochs then train in ~3.5 minutes on 2 cores and the evaluation
    # takes ~3.
    return ["backbone.name=small-cnn", "backbone.widths=[32, 128, 256, 64]", "backbone.grid=4",
            "method.proj_hidden_dim=1024", "train.epochs=8", "train.batch_size=128",
            "optim.name=lars", "optim.lr=0.6", "optim.warmup_epochs=1", "optim.schedule=linear",
            "optim.weight_decay=1e-6", "method.temperature=0.1", "train.steps_per_epoch=180",
            "train.probe_every=2", "train.probe_train_samples=5000", "train.probe_test_samples=2000",
            f"train.precision={'bf16' if cpu_has_native_bf16() else 'fp32'}"]


def cmd_demo(args) -> int:
    from selfsup.run_config import load_config
    from selfsup.train import pretrain
    from selfsup.train.device import resolve_device

    started = time.perf_counter()
    cuda = resolve_device(args.device).type == "cuda"
    out = args.out or time.strftime("runs/demo-%Y%m%d-%H%M%S")
    overrides = ["method.name=simclr", "data.dataset=fashion-mnist", f"out={out}",
                 f"train.device={args.device}"] + demo_overrides(cuda)
    if args.data_dir:
        overrides.append(f"data.data_dir={json.dumps(args.data_dir)}")
    config = load_config(None, overrides + args.set)
    print(f"selfsup demo: SimCLR on Fashion-MNIST with {config.backbone['name']} on "
          f"{'GPU' if cuda else 'CPU'}, {config.train.epochs} epochs → {out}")
    run_dir = pretrain(config)
    if not _is_main_process():  # under torchrun, rank 0 alone evaluates and reports
        return 0
    _evaluate_and_report(run_dir, device=args.device)
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


COMMANDS = {"pretrain": cmd_pretrain, "evaluate": cmd_evaluate, "finetune": cmd_finetune,
            "bo": cmd_bo, "embed": cmd_embed, "export": cmd_export, "report": cmd_report, "list": cmd_list,
            "demo": cmd_demo}


# Commands that train under torchrun, on every process; every other command (evaluation,
# fine-tuning, reports, BO) runs on one process, so under torchrun the other ranks do nothing
# rather than repeat the work and race rank 0 writing the same files.
DISTRIBUTED_COMMANDS = ("pretrain", "demo")


def _is_main_process() -> bool:
    from selfsup.train.process import is_main_process  # torch-free: no training stack loads

    return is_main_process()


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command not in DISTRIBUTED_COMMANDS and not _is_main_process():
            return 0
        return COMMANDS[args.command](args)
    except SelfsupError as e:
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("\nselfsup: interrupted. Checkpoints are written at the end of each epoch; continue "
              "with `selfsup pretrain --out RUN --resume`.", file=sys.stderr)
        return 130
    except OSError as e:  # the file system said no: full, read-only, not ours, not there
        print(f"selfsup: error: {file_system_error(e)}", file=sys.stderr)
        return 2
    except Exception:  # not the user's doing: say so, and keep the traceback for the report
        traceback.print_exc()
        print("selfsup: internal error: this is a bug in selfsup, not in your input; please "
              "report it with the traceback above and the command you ran", file=sys.stderr)
        return 1


def file_system_error(error: OSError) -> str:
    """An OSError in words that name the file and what to do; files selfsup writes are written
    whole or not at all, so what was there before (the last checkpoint) is intact."""
    what = error.strerror or str(error)
    where = f" ({error.filename})" if error.filename else ""
    fixes = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
             errno.EROFS: "choose a writable --out", errno.EACCES: "choose a folder you may write to",
             errno.EPERM: "choose a folder you may write to",
             errno.ENOENT: "create its folder first, or check the path",
             errno.ENOTDIR: "a file stands where the path needs a folder; choose another path",
             errno.EEXIST: "a file stands where the path needs a folder; choose another path"}
    fix = fixes.get(error.errno, "check the path")
    return (f"{what}{where}: {fix}. Every file selfsup writes is written whole or not at all, so "
            "what was there before is intact (a run's last checkpoint too: continue it with "
            "--resume).")


if __name__ == "__main__":
    sys.exit(main())
