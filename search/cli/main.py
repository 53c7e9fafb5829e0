"""``edgepareto``: a thin command-line layer over the Python API in ``search``."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from search.config.objectives import OBJECTIVES
from search.config.run_config import csv_items
from search.core.errors import UserError
from search.core.text import first_line, one_line

EXIT_USAGE = 2
EXIT_NO_FIT = 3  # edgepareto select: no Pareto model meets the budget
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("edgepareto").strip()
        raise UserError(f"{command}: {message}" if command else message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _bounded(field: str) -> Callable[[str], int | float]:
    """An argparse type for a size-like flag, checked against its bound (``search.config.bounds``)."""
    from search.config.bounds import parse_bounded

    def parse(text: str) -> int | float:
        try:
            return parse_bounded(field, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = field  # argparse names the type in its message
    return parse


def _on_off(text: str) -> bool:
    if text.lower() not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text.lower() == "on"


def _csv(text: str) -> tuple[str, ...]:
    return csv_items(text)


def _models(text: str) -> str | tuple[str, ...]:
    names = _csv(text)
    return names[0] if len(names) == 1 else names


# flag -> (RunConfig field, type, help). One table for every search option.
SEARCH_OPTIONS: dict[str, tuple[str, Any, str]] = {
    "--name": ("name", str, "run name (default: search-DATE-TIME); runs are never overwritten"),
    "--model": (
        "model", _models, "timm model name, or a comma list searched together (default resnet18)"
    ),
    "--checkpoint": (
        "checkpoint", str, "timm checkpoint to start from: .safetensors, or .pth/.pt with state_dict, "
        "state_dict_ema or model (a classifier for other classes is re-initialised)"
    ),
    "--pretrained": (
        "pretrained", _on_off, "start from timm's pretrained weights (Hugging Face cache; HF_HUB_OFFLINE=1 "
        "works when cached), classifier reset to the data's classes"
    ),
    "--teacher": (
        "teacher", str, "distillation teacher: base (default), a timm model name, or a checkpoint"
    ),
    "--data": ("data", str, "'digits' (embedded default) or an ImageFolder path"),
    "--img-size": ("img_size", int, "input size in pixels (default: the model family's, 32 for ResNets; "
                   "edgepareto models)"),
    "--augment": (
        "augment", str, "training augmentation: none, light (random resized crop, flip) or strong "
        "(plus RandAugment) for an ImageFolder (default light); none or shift (random translation "
        "by 1/8 of the size) for the digits (default: the model family's, edgepareto models)"
    ),
    "--workers": (
        "workers", int, "loader processes reading an ImageFolder (default: half the CPUs of a trial, 1 to 8)"
    ),
    "--patch-size": ("patch_size", int, "ViT patch size (default: a grid of at least 8x8 patches)"),
    "--epochs": ("epochs", int, "baseline training epochs (default: the model family's; edgepareto models)"),
    "--batch-size": ("batch_size", int, "training batch size (default 64)"),
    "--lr": ("lr", float, "baseline learning rate (default: the model family's; edgepareto models)"),
    "--finetune-lr": ("finetune_lr", float, "recovery fine-tuning learning rate (default: the family's)"),
    "--val-fraction": ("val_fraction", float, "validation share of the data (default 0.2)"),
    "--test-fraction": ("test_fraction", float, "test share of the data (default 0.2)"),
    "--seed": ("seed", int, "seed for splits, training and the sampler (default 0)"),
    "--space": (
        "space", str, "auto (default: the model family's preset: vit for ViTs, mobile for MobileNets "
        "and EfficientNets, else default), a preset (default, mobile, cnn, vit, quant-only) or a YAML file"
    ),
    "--objectives": ("objectives", _csv, "comma list of accuracy,latency,size (default all)"),
    "--sampler": ("sampler", str, "tpe (default), random or nsga2"),
    "--sampler-seed": ("sampler_seed", int, "the sampler's seed (default: --seed)"),
    "--warm-start": ("warm_start", _on_off, "on (default): try each technique's recipe first"),
    "--trials": ("trials", _positive_int, "number of trials, the baseline included (default 60)"),
    "--timeout": ("timeout", float, "stop starting new trials after this many seconds"),
    "--storage": ("storage", str, "Optuna RDB storage URL (default sqlite in the run folder)"),
    "--min-accuracy": ("min_accuracy", float, "budget: validation accuracy at least (fraction)"),
    "--max-accuracy-drop": (
        "max_accuracy_drop", float, "budget: at most this many points below the baseline (default 5)"
    ),
    "--max-latency-ms": ("max_latency_ms", float, "budget: latency at most, in ms"),
    "--max-size-mb": ("max_size_mb", float, "budget: model file at most, in MB"),
    "--fidelity": (
        "fidelity", str, "off (default): fine-tune every candidate; structure: time and size its "
        "structure first, and stop (PRUNED) what is over a budget or beaten by the front at the "
        "baseline's accuracy + 0.5 points; halving: structure, then fine-tune in rungs of 1, 3, 9... "
        "epochs up to the baseline's training length, each rung keeping the top third (MO-ASHA)"
    ),
    "--target": ("target", str, "latency target: host (default), a device profile (edgepareto "
                 "targets) or remote:http://DEVICE:PORT"),
    "--latency": (
        "latency", str, "measure | predict | hybrid (default: measure where the target can be measured)"
    ),
    "--agent": ("agent", str, "http://DEVICE:PORT of the agent measuring a device profile's target"),
    "--ca-file": ("ca_file", str, "PEM certificate (or CA) of an https agent (default: the system's CAs)"),
    "--threads": ("threads", int, "threads on the target (default 1)"),
    "--repeats": ("repeats", int, "timed runs per latency measurement (default 50)"),
    "--backend": ("backend", str, "optuna (default; add processes with edgepareto worker) or ray"),
    "--ray-address": (
        "ray_address", str, "ray: auto, ray://HOST:10001 or HOST:6379 of a cluster (default: a local Ray)"
    ),
    "--cpus-per-trial": (
        "cpus_per_trial", _positive_int,
        "torch and onnxruntime threads per trial (default: all cores; ray: 1)",
    ),
    "--gpus-per-trial": ("gpus_per_trial", float, "ray: GPUs reserved per trial (default 0)"),
    "--max-concurrent": ("max_concurrent", _positive_int, "ray: trials at once (default: as CPUs allow)"),
    "--trial-timeout": ("trial_timeout", float, "fail a trial that runs longer than this many seconds"),
}


DB_RETRY_HELP = (
    "seconds to wait for an unreachable study database (retrying with backoff) before stopping "
    "(default 60, or $EDGEPARETO_DB_RETRY_S)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgepareto", description="Compression search for vision models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    search = sub.add_parser("search", help="run a compression search")
    for flag, (dest, kind, text) in SEARCH_OPTIONS.items():
        if flag == "--pretrained":  # a bare --pretrained means on
            search.add_argument(flag, dest=dest, type=kind, nargs="?", const=True, default=None, help=text)
            continue
        search.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    search.add_argument("--config", help="YAML run config; flags override it")
    search.add_argument("--runs-dir", default=None, help="where runs are written (default runs)")
    search.add_argument("--resume", metavar="NAME", help="continue the interrupted run NAME")
    search.add_argument("--quiet", action="store_true", help="no progress lines")
    search.add_argument("--db-retry-s", type=float, default=None, help=DB_RETRY_HELP)

    worker = sub.add_parser(
        "worker", help="join a run as one more process: its trials, through a shared RDB storage"
    )
    worker.add_argument("name", help="the run (study) to join")
    worker.add_argument("--storage", required=True, help="the run's storage, e.g. postgresql://...")
    worker.add_argument(
        "--runs-dir", default=None, help="the shared runs root (default: the one the run started with)"
    )
    worker.add_argument("--quiet", action="store_true", help="no progress lines")
    worker.add_argument("--db-retry-s", type=float, default=None, help=DB_RETRY_HELP)

    show = sub.add_parser("show", help="print the Pareto table of a finished run")
    show.add_argument("name")
    show.add_argument("--runs-dir", default="runs")

    report = sub.add_parser("report", help="(re)write runs/NAME/report.html, a self-contained page")
    report.add_argument("name")
    report.add_argument("--runs-dir", default="runs")

    select = sub.add_parser(
        "select", help="pick the Pareto model that fits a budget (exit 3 and the closest when none does)"
    )
    select.add_argument("name")
    select.add_argument("--max-latency-ms", type=float, help="latency on the run's target at most, ms")
    select.add_argument("--max-size-mb", type=float, help="model file at most, MB")
    select.add_argument("--min-accuracy", type=float, help="test accuracy at least (fraction, e.g. 0.97)")
    select.add_argument(
        "--prefer", choices=list(OBJECTIVES), default="accuracy",
        help="what the chosen model maximises within the budget (default accuracy)",
    )
    select.add_argument("--json", action="store_true", help="print the answer as JSON")
    select.add_argument("--copy-to", metavar="DIR", help="also export the chosen model there (as export)")
    select.add_argument("--runs-dir", default="runs")

    export = sub.add_parser(
        "export", help="write one trial as model.onnx + model.json card + predict.py (onnxruntime only)"
    )
    export.add_argument("name")
    export.add_argument("--trial", type=int, required=True, help="trial number (see show or trials.csv)")
    export.add_argument("--to", required=True, metavar="DIR", help="new or empty folder")
    export.add_argument("--runs-dir", default="runs")

    sub.add_parser("targets", help="list the latency targets: host and the device profiles")
    models = sub.add_parser(
        "models", help="the model families: training defaults, input size and space of each"
    )
    models.add_argument("name", nargs="?", help="a timm model name: its family and defaults")

    serve = sub.add_parser("serve", help="the search service: a REST API to submit, watch and fetch searches")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    serve.add_argument("--port", type=_bounded("port"), default=8000)
    serve.add_argument("--runs-dir", default="runs", help="where the searches' run folders go")
    serve.add_argument("--data-root", default=".", help="data, checkpoint and space paths must lie under it")
    serve.add_argument("--db", help="jobs database, any SQLAlchemy URL (default sqlite:///RUNS_DIR/service.db)")
    serve.add_argument(
        "--max-running", type=_bounded("max_running"), default=1,
        help="searches at once (0: queue only)",
    )
    serve.add_argument("--token-file", help="file holding the bearer token (else $EDGEPARETO_TOKEN)")
    serve.add_argument(
        "--max-body-bytes", type=_bounded("max_body_bytes"), default=65536,
        help="request size limit",
    )
    serve.add_argument("--ray-address", help="run searches on this Ray cluster (--backend ray)")
    serve.add_argument(
        "--allow-agent", action="append", metavar="URL",
        help="an agent a request may name (agent, target remote:URL); repeatable (default: none)",
    )
    serve.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS (with --tls-key)")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--ca-file", help="PEM certificate (or CA) that https agents are verified against")
    sub.add_parser(
        "agent", add_help=False,
        help="serve latency measurements on a device over HTTP (onnxruntime and numpy only; "
        "edgepareto agent --help)",
    )

    analyze = sub.add_parser("analyze", help="ONNX graph analysis: MACs, bytes, shapes per node")
    analyze.add_argument("onnx_file")
    analyze.add_argument("--batch", type=_bounded("batch"), default=1)
    analyze.add_argument("--nodes", action="store_true", help="one line per node, not per op type")

    calibrate = sub.add_parser(
        "calibrate", help="measure diverse candidates on a target and fit its latency predictor"
    )
    calibrate.add_argument("--target", default="host", help="host, a device profile, or remote:URL")
    calibrate.add_argument("--agent", help="http://DEVICE:PORT of the agent on a profile's device")
    calibrate.add_argument("--ca-file", help="PEM certificate (or CA) of an https agent")
    calibrate.add_argument("--samples", type=_bounded("samples"), default=150, help="models to measure (150)")
    calibrate.add_argument("--model", type=_csv, default=None, help="comma list of base models "
                           "(default resnet18,mobilenetv3_small_100,vit_tiny_patch16_224)")
    calibrate.add_argument("--img-size", type=_bounded("img_size"), default=32)
    calibrate.add_argument("--threads", type=_bounded("threads"), default=1)
    calibrate.add_argument(
        "--repeats", type=_bounded("calibrate_repeats"), default=10, help="timed runs per pass (10)",
    )
    calibrate.add_argument("--runs-dir", default="runs")
    calibrate.add_argument("--seed", type=_bounded("seed"), default=0)
    calibrate.add_argument(
        "--from", dest="source", default=None,
        help="adapt another device's calibration (a file, a folder of runs/targets such as host-1t, or "
        "its target name) from --samples models (use 20) instead of calibrating from scratch",
    )

    bench = sub.add_parser("bench", help="benchmarks")
    bench.add_argument(
        "what",
        choices=["search", "techniques", "predictor", "scaling", "service", "scale", "families", "peers",
                 "profiles"],
    )
    bench.add_argument("--trials", type=_bounded("trials"), default=None, help="default 20 (scale: 3)")
    bench.add_argument("--seeds", type=_bounded("seeds"), default=3)
    bench.add_argument("--runs-dir", default="runs")
    bench.add_argument("--model", default=None, help="families: a comma list (default: the six families)")
    bench.add_argument("--img-size", type=_bounded("img_size"), default=None)
    bench.add_argument("--target", default="host", help="predictor: the target to measure on")
    bench.add_argument("--agent", help="predictor: the agent of a profile's device")
    bench.add_argument("--ca-file", help="predictor: PEM certificate (or CA) of an https agent")
    bench.add_argument("--train", type=_bounded("train"), default=150, help="predictor: models fitted on")
    bench.add_argument("--held-out", type=_bounded("held_out"), default=60, help="predictor: models scored")
    bench.add_argument(
        "--from", dest="source", default=None,
        help="predictor: measure transfer from this calibration (as calibrate --from) to --target at "
        "--threads with 10, 20 and 50 samples",
    )
    bench.add_argument("--threads", type=_bounded("threads"), default=None,
                       help="predictor: threads of the measured target (default 1; 2 with --from)")
    bench.add_argument(
        "--epochs", type=_bounded("epochs"), default=None,
        help="scaling, scale, families, search --fidelity, techniques --quantization/--mixed-precision: "
        "baseline training epochs (default: the family's)",
    )
    bench.add_argument(
        "--images", type=_csv, default=None,
        help="scale: comma list of data set sizes, synthetic JPEGs (default 2000,20000)",
    )
    bench.add_argument("--workers", type=_bounded("workers"), default=None, help="scale: loader processes")
    bench.add_argument("--json", action="store_true", help="scale: the measurements as JSON")
    bench.add_argument(
        "--fidelity", type=_csv, default=None,
        help="search: compare these fidelities on the wall clock instead (e.g. off,structure,halving)",
    )
    bench.add_argument(
        "--budget-s", type=_bounded("timeout"), default=600, help="search --fidelity: seconds per run (600)",
    )
    bench.add_argument("--data", default=None, help="search --fidelity: an ImageFolder (default: the digits)")
    bench.add_argument("--clients", type=_bounded("clients"), default=50, help="service: concurrent requests")
    bench.add_argument("--bursts", type=_bounded("bursts"), default=20, help="service: bursts per phase")
    bench.add_argument(
        "--soak", action="store_true",
        help="service: the soak instead: searches at once, the server killed and the jobs database "
        "made read-only midway, then what must hold checked (exit 1 when something did not)",
    )
    bench.add_argument(
        "--quantization", action="store_true",
        help="techniques: QAT vs post-training int8 (and 25%% kept float) on --model's trained baseline",
    )
    bench.add_argument(
        "--mixed-precision", action="store_true",
        help="techniques: quantize.keep_float vs NNCF's quantize_with_accuracy_control on --model's "
        "trained baseline (needs pip install -e '.[nncf]')",
    )
    bench.add_argument(
        "--max-drop", type=float, default=0.01,
        help="techniques --mixed-precision: NNCF's allowed top-1 drop on validation (0.01)",
    )
    bench.add_argument("--run", help="peers: the finished run whose front the smaller models face")
    bench.add_argument("--searches", type=_bounded("searches"), default=20, help="service --soak: searches")
    bench.add_argument(
        "--max-running", type=_bounded("max_concurrent"), default=2,
        help="service --soak: at once",
    )
    bench.add_argument(
        "--kills", type=_bounded("kills"), default=2,
        help="service --soak: SIGKILLs of the server",
    )
    bench.add_argument(
        "--setups", type=_csv, default=None,
        help="scaling: comma list of optuna-1, optuna-2, ray-1, ray-2 (default all)",
    )
    return parser


def _bench_config(args: argparse.Namespace, name: str) -> Any:
    """The run configuration a benchmark on one trained baseline uses: the defaults, with
    ``--model``, ``--img-size``, ``--data`` and ``--epochs`` where given."""
    from search import RunConfig

    extra = {k: v for k, v in (("model", args.model), ("img_size", args.img_size),
                               ("data", args.data), ("epochs", args.epochs)) if v is not None}
    return RunConfig.from_dict({"name": name, "runs_dir": args.runs_dir, **extra})


def _db_retry(args: argparse.Namespace) -> None:
    """``--db-retry-s``: checked, then given to this process's storages and the processes it starts."""
    if args.db_retry_s is not None:
        from search.study.cluster import DB_RETRY_ENV, db_retry_s

        os.environ[DB_RETRY_ENV] = repr(db_retry_s(args.db_retry_s))


def _search(args: argparse.Namespace) -> int:
    from search import RunConfig, resume_search, run_search
    from search.study.progress import Progress

    _db_retry(args)

    overrides = {dest: getattr(args, dest) for dest, _, _ in SEARCH_OPTIONS.values()}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.resume:
        from search.study.engine import RESUMABLE

        extra = sorted(set(overrides) - set(RESUMABLE))
        if extra or args.config:
            flags = ", ".join("--" + k.replace("_", "-") for k in RESUMABLE)
            raise UserError(
                f"--resume takes its settings from the run's run.yaml; only {flags} may change "
                f"(got {', '.join('--' + k.replace('_', '-') for k in extra) or '--config'})"
            )
        report = resume_search(args.resume, args.runs_dir or "runs", quiet=args.quiet, **overrides)
    else:
        base: dict[str, Any] = {}
        if args.config:
            base = _read_yaml(args.config)
        if args.runs_dir is not None:
            base["runs_dir"] = args.runs_dir
        cfg = RunConfig.from_dict({**base, **overrides})
        report = run_search(cfg, Progress(cfg.objectives, cfg.directions, quiet=args.quiet))
    print(report.table())
    print(f"\nresults: {report.run_dir}/pareto.csv, trials.csv, summary.json, report.html")
    return 0


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read config {path}: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping of settings")
    return data


def _worker(args: argparse.Namespace) -> int:
    from search.study.engine import run_worker

    _db_retry(args)
    ran = run_worker(args.name, args.storage, args.runs_dir, quiet=args.quiet)
    print(f"worker {args.name}: ran {ran} trial(s)")
    return 0


def _root(args: argparse.Namespace) -> Any:
    from search.config.run_config import check_name
    from search.study.runs_root import open_root

    check_name(args.name)  # nothing outside the runs root
    return open_root(args.runs_dir)


def _load(args: argparse.Namespace, trials: bool = False) -> Any:
    """The finished run ``args.name`` under ``args.runs_dir`` (pulled first from a URL root)."""
    from search.front.run import load_report

    root = _root(args)
    root.pull(args.name, recursive=trials)
    return load_report(root.local / args.name)


def _show(args: argparse.Namespace) -> int:
    run = _load(args)
    print(run.table())
    print(f"trials: {run.counts().describe()}")
    stages = run.time_per_stage()
    if stages:
        print(stages)
    return 0


def _report(args: argparse.Namespace) -> int:
    path = _load(args).write_report()
    _root(args).push(Path(args.name) / path.name)
    print(f"report: {path}")
    return 0


def _select(args: argparse.Namespace) -> int:
    import json

    run = _load(args, trials=bool(args.copy_to))
    choice = run.select(args.max_latency_ms, args.max_size_mb, args.min_accuracy, args.prefer)
    copied = run.export(choice.trial, args.copy_to) if choice.fits and args.copy_to else None
    if args.json:
        print(json.dumps({**choice.to_dict(), "copied_to": str(copied) if copied else None}, indent=2))
    else:
        print(choice.message())
        print(f"model: {choice.model['path']}")
        if copied:
            print(f"copied to {copied}: model.onnx, model.json, predict.py")
    if not choice.fits:
        if args.copy_to:
            print(f"edgepareto: nothing copied to {args.copy_to}: no model fits", file=sys.stderr)
        return EXIT_NO_FIT
    return 0


def _export(args: argparse.Namespace) -> int:
    folder = _load(args, trials=True).export(args.trial, args.to)
    print(f"exported trial {args.trial} of {args.name} to {folder}: model.onnx, model.json, predict.py")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from search.service.server import serve

    serve(
        host=args.host, port=args.port, runs_dir=Path(args.runs_dir), data_root=Path(args.data_root),
        db_url=args.db, max_running=args.max_running, token_file=args.token_file,
        max_body_bytes=args.max_body_bytes, ray_address=args.ray_address, allow_agent=args.allow_agent,
        tls_cert=args.tls_cert, tls_key=args.tls_key, ca_file=args.ca_file,
    )
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from search.calibrate.fit import DEFAULT_MODELS, calibrate, format_calibration

    calibration, path = calibrate(
        args.target, agent=args.agent, samples=args.samples, models=args.model or DEFAULT_MODELS,
        img_size=args.img_size, threads=args.threads, repeats=args.repeats,
        runs_root=Path(args.runs_dir), seed=args.seed, log=_log, ca_file=args.ca_file, source=args.source,
    )
    print(format_calibration(calibration, path))
    return 0


def _log(message: str) -> None:
    print(f"[edgepareto] {message}", file=sys.stderr, flush=True)


def _bench(args: argparse.Namespace) -> int:
    if args.what == "families":
        from search.bench.families import MODELS, bench_families, format_families

        rows = bench_families(
            trials=args.trials or 20, runs_dir=args.runs_dir,
            models=_csv(args.model) if args.model else MODELS, log=_log, img_size=args.img_size,
            epochs=args.epochs,
        )
        print(format_families(rows))
        return 0
    if args.what == "profiles":
        from search.bench.profiles import bench_profiles, format_profiles, load_published, thread_exponents

        print(format_profiles(*bench_profiles(log=_log), thread_exponents(load_published())))
        return 0
    if args.what == "predictor":
        from search.calibrate.fit import (
            DEFAULT_MODELS,
            bench_predictor,
            bench_transfer,
            format_bench,
            format_transfer,
        )

        models = _csv(args.model) if args.model else DEFAULT_MODELS
        if args.source:
            table = bench_transfer(
                args.source, args.target, agent=args.agent, held_out=args.held_out, models=models,
                img_size=args.img_size or 32, threads=args.threads or 2, runs_root=Path(args.runs_dir),
                log=_log, ca_file=args.ca_file,
            )
            print(format_transfer(table))
            return 0
        table = bench_predictor(
            args.target, agent=args.agent, train=args.train, held_out=args.held_out, models=models,
            img_size=args.img_size or 32, threads=args.threads or 1,
            save_to=Path(args.runs_dir) / "bench" / f"predictor-{time.strftime('%Y%m%d-%H%M%S')}.csv",
            log=_log, ca_file=args.ca_file,
        )
        print(format_bench(table))
        return 0
    if args.what == "scale":
        from search.bench.scale import bench_scale, format_scale, parse_images, scale_json

        points = bench_scale(
            images=parse_images(args.images or ("2000", "20000")), img_size=args.img_size or 224,
            model=args.model or "resnet18", trials=args.trials or 3, epochs=args.epochs or 1,
            workers=args.workers, runs_dir=args.runs_dir, log=_log,
        )
        print(scale_json(points) if args.json else format_scale(points))
        return 0
    if args.what == "scaling":
        from search.bench.scaling import SETUPS, bench_scaling, format_scaling

        setups = tuple(args.setups or SETUPS)
        unknown = [s for s in setups if s not in SETUPS]
        if unknown:
            raise UserError(f"unknown setup(s) {', '.join(unknown)}; choose from {', '.join(SETUPS)}")
        results = bench_scaling(
            trials=args.trials or 20, runs_dir=args.runs_dir, model=args.model or "resnet18",
            img_size=args.img_size or 16, epochs=args.epochs, setups=setups, log=_log,
        )
        print(format_scaling(results))
        return 0
    if args.what == "service" and args.soak:
        from search.bench.soak import SoakPlan, format_soak, soak_service

        if args.kills < 0:
            raise UserError(f"--kills must be 0 or more, got {args.kills}")
        plan = SoakPlan(searches=args.searches, max_running=args.max_running, kills=args.kills)
        result = soak_service(plan, runs_dir=args.runs_dir, log=_log)
        print(format_soak(result))
        return 1 if result.violations else 0
    if args.what == "service":
        from search.bench.service import bench_service, format_service

        print(format_service(bench_service(args.clients, args.bursts, args.runs_dir, log=_log)))
        return 0
    if args.what == "peers":
        from search.bench.peers import bench_peers, format_peers

        if not args.run:
            raise UserError("bench peers needs --run NAME (a finished run)")
        run = Path(args.run) if Path(args.run).is_dir() else Path(args.runs_dir) / args.run
        print(format_peers(bench_peers(run, _csv(args.model) if args.model else None, log=_log)))
        return 0
    if args.what == "techniques" and args.mixed_precision:
        from search.bench.mixed import bench_mixed_precision
        from search.bench.techniques import format_quantization

        if not 0 < args.max_drop < 1:
            raise UserError(f"--max-drop must be a fraction in (0, 1), got {args.max_drop}")
        cfg = _bench_config(args, "bench-mixed-precision")
        table = bench_mixed_precision(cfg, Path(args.runs_dir), log=_log, max_drop=args.max_drop)
        print(format_quantization(table))
        return 0
    if args.what == "techniques" and args.quantization:
        from search.bench.techniques import bench_quantization, format_quantization

        cfg = _bench_config(args, "bench-quantization")
        print(format_quantization(bench_quantization(cfg, Path(args.runs_dir), log=_log)))
        return 0
    if args.what == "techniques":
        from search.bench.techniques import bench_techniques, format_techniques

        table = bench_techniques(
            model=args.model or "vit_tiny_patch16_224", img_size=args.img_size or 32
        )
        print(format_techniques(table))
        return 0
    if args.fidelity:
        from search.bench.search import bench_fidelity

        print(bench_fidelity(
            budget_s=args.budget_s, fidelities=args.fidelity, seeds=args.seeds, runs_dir=args.runs_dir,
            model=args.model, img_size=args.img_size, data=args.data, epochs=args.epochs,
        ))
        return 0
    from search.bench.search import bench_search

    print(bench_search(
        trials=args.trials or 20, seeds=args.seeds, runs_dir=args.runs_dir,
        model=args.model, img_size=args.img_size,
    ))
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from targets.graph import analyze, format_cost

    path = Path(args.onnx_file)
    if not path.is_file():
        raise UserError(f"no ONNX file at {path}")
    try:
        cost = analyze(path, batch=args.batch)
    except Exception as exc:
        raise UserError(f"cannot analyse {path}: {one_line(exc)}") from None
    print(format_cost(cost, per_node=args.nodes))
    return 0


def _targets(args: argparse.Namespace) -> int:
    from targets.profile import format_targets

    print(format_targets())
    return 0


def _models(args: argparse.Namespace) -> int:
    from search.task.families import format_families
    from search.task.models import check_model_name

    if args.name:
        check_model_name(args.name)
    print(format_families(args.name))
    return 0


COMMANDS = {
    "models": _models,
    "search": _search, "show": _show, "bench": _bench, "analyze": _analyze, "targets": _targets,
    "calibrate": _calibrate, "worker": _worker, "report": _report, "select": _select, "export": _export,
    "serve": _serve,
}


def shares_the_machine(argv: Sequence[str]) -> bool:
    """Whether this command runs trials beside other trial processes of its own: ``worker`` (beside a
    search), ``serve`` (searches at once) and ``search --backend ray``. Their OpenMP threads then wait
    passively instead of spinning: libgomp reads ``OMP_WAIT_POLICY`` when torch loads, so it is set
    before any torch import, and the processes started from here inherit it. Under load, spinning
    threads cost EfficientNet-B0's trial 2-5x; on a quiet machine passive waiting costs 10-20%, so a
    lone search keeps spinning (README, "Model families")."""
    command = argv[0] if argv else ""
    if command in ("worker", "serve"):
        return True
    if command != "search":
        return False
    joined = " ".join(argv)
    if "--backend ray" in joined or "--backend=ray" in joined:
        return True
    if "--backend" in joined:  # a flag overrides the config file
        return False
    return _config_backend(argv) == "ray"


def _config_backend(argv: Sequence[str]) -> str | None:
    """The ``backend`` of the ``--config`` file, where one is given and readable (errors in it are
    reported later, by the command itself)."""
    for i, arg in enumerate(argv):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else (
            argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None
        )
        if path is None:
            continue
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, ValueError, yaml.YAMLError):
            return None
        return loaded.get("backend") if isinstance(loaded, dict) else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["agent"]:  # runs on the device: onnxruntime and numpy, never torch or optuna
        from targets.agent import main as agent_main

        return agent_main(argv[1:])
    if shares_the_machine(argv):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    warnings.filterwarnings("ignore")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"edgepareto: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_USAGE)  # the storage lost for good: EXIT_STORAGE
    except KeyboardInterrupt:
        if argv[:1] == ["worker"]:
            print(
                "\nedgepareto: worker interrupted; completed trials are saved and the run's other "
                "processes re-queue the trial it was running", file=sys.stderr,
            )
        else:
            print(
                "\nedgepareto: interrupted; completed trials are saved. Continue with "
                "'edgepareto search --resume NAME'", file=sys.stderr,
            )
        return EXIT_INTERRUPTED


def entry() -> None:
    sys.exit(main())
