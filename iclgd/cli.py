"""The `iclgd` command: check, train, reproduce, llc, bench."""
from __future__ import annotations

import argparse
import contextlib
import re
import signal
import sys
import threading

from iclgd import __version__

EX_IOERR = 74  # sysexits.h: an input/output error
EXIT_SIGINT = 130  # 128 + SIGINT, the shell's convention
EXIT_SIGPIPE = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader went away

EPILOG = f"""exit codes:
  0    success (reproduce: every claim holds; with --quick, every smoke check)
  1    a claim or check does not hold, or training diverged (the last good checkpoint is kept),
       or (llc) the SGLD chains of a checkpoint diverged (its result file says where)
  2    a bad command line, config or setting, or a backend whose extra is not installed
  {EX_IOERR}   an operating-system error: disk full, read-only file system, permission denied,
       a file where a directory belongs (one line on stderr names what failed and the path)
  {EXIT_SIGINT}  interrupted (Ctrl-C); training stops between two updates and the same command resumes it
  143  stopped by SIGTERM; the same command resumes the run
  {EXIT_SIGPIPE}  standard output closed early (as by `| head`): the rest of the output is dropped, silently"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default, "(default: ...)", unless its help already says it; keeps
    the epilog's line breaks.  Flags (store_true) and options without a value (None) show none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or isinstance(action.default, bool):
            return text
        return super()._get_help_string(action)


# --- errors worded with the command line's flags -----------------------------------------------------


def flag_names(message: str, fields: list[str]) -> str:
    """``message`` with each of ``fields`` (a setting's field names) written as its flag where it
    is the subject of a rule: "val_tasks must be >= 2" -> "--val-tasks must be >= 2"."""
    if not fields:
        return message
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, fields)) + r")(?= must\b)")
    return pattern.sub(lambda match: "--" + match.group(1).replace("_", "-"), message)


@contextlib.contextmanager
def errors_with_flags(args: argparse.Namespace):
    """Re-raise a ValueError with the fields that the command has flags for named as the flags."""
    try:
        yield
    except ValueError as error:
        fields = [name for name in vars(args) if name not in ("run", "command", "claim")]
        raise ValueError(flag_names(str(error), fields)) from None


def os_error_line(error: OSError) -> str:
    """``<what failed>: <path>`` (the path when the error names one), on one line."""
    what = error.strerror or str(error) or type(error).__name__
    text = f"{what}: {error.filename}" if error.filename is not None else what
    return " ".join(text.split())


# --- commands ------------------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    from iclgd.checks import format_rows, run_checks

    rows = run_checks(seed=args.seed, n_tasks=args.tasks)
    print(format_rows(rows))
    return 0 if all(row.ok for row in rows) else 1


def _override_train(config, **changes):
    """The config with [train] fields replaced by the command line's (validated again)."""
    import dataclasses

    changes = {key: value for key, value in changes.items() if value is not None}
    try:
        return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))
    except ValueError as error:
        raise ValueError(f"command line: {flag_names(str(error), list(changes))}") from None


def final_loss(run_dir) -> float | None:
    """The loss on the last line of a run's metrics.jsonl (None when nothing was logged)."""
    from pathlib import Path

    from iclgd import runio

    records = [record for record in runio.read_jsonl(Path(run_dir) / "metrics.jsonl") if "loss" in record]
    return records[-1]["loss"] if records else None


def _train(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from iclgd.config import load_run_config
    from iclgd.train import train_seeds

    config = _override_train(load_run_config(args.config, overrides=args.set), backend=args.backend, sampler=args.sampler)
    if args.seeds is None:
        run_dirs, configs = [Path(args.out)], [config]
    else:
        _check_seeds(config, args.seeds)
        seeds = [config.train.seed + i for i in range(args.seeds)]
        configs = [dataclasses.replace(config, train=dataclasses.replace(config.train, seed=s)) for s in seeds]
        run_dirs = [Path(args.out) / f"seed_{s}" for s in seeds]
    states = train_seeds(run_dirs, configs, quiet=args.quiet)
    for run_dir, state in zip(run_dirs, states):
        loss = final_loss(run_dir)
        loss_text = "no loss logged" if loss is None else f"final loss {loss:.6g}"
        print(f"{run_dir}: trained {state.step} steps, {loss_text}; checkpoints in {run_dir / 'checkpoints'}")
    return 0


def _check_seeds(config, n_seeds: int) -> None:
    """Refuse a --seeds count that cannot run, before anything is written: each seed's number
    must fit int64, each run holds its directory's lock (an open file) while training, and every
    run's state (all of their steps at once on jax, which vmaps them) must fit in memory."""
    from iclgd import limits
    from iclgd._checks import INT64_MAX

    if n_seeds < 1:
        raise ValueError(f"--seeds must be a positive integer; got {n_seeds}")
    first = config.train.seed
    if first + n_seeds - 1 > INT64_MAX:
        raise ValueError(f"--seeds {n_seeds} from [train] seed {first} runs past the largest seed 2**63 - 1; got a last seed of {first + n_seeds - 1}")
    files = limits.open_files_limit()
    if files is not None and n_seeds > files - limits.RESERVED_FILES:
        raise ValueError(
            f"--seeds {n_seeds} is too many for this process: each run holds its directory's lock (an open file) while "
            f"training, and it may open {files} files (ulimit -n), {limits.RESERVED_FILES} of them kept for everything else; "
            f"use at most {max(0, files - limits.RESERVED_FILES)} seeds or raise the limit"
        )
    if config.model.family == "transformer":  # trained one after the other: one run's memory at a time
        return
    together = config.train.backend == "jax"
    lsa = config.model.lsa_config() if config.model.family != "lsa" else config.model
    limits.check_bytes(
        f"--seeds {n_seeds}",
        limits.seeds_bytes(config.task, lsa, config.train.batch_size, n_seeds, together=together),
        f"training {n_seeds} runs ({'all steps at once, vmapped' if together else 'one step at a time'}; each "
        f"{limits.lsa_shape_text(lsa, config.train.batch_size, config.task.n_context)})",
    )


def _llc(args: argparse.Namespace) -> int:
    from iclgd.experiments import llc_run

    run_info = llc_run.open_run(args.run_dir)
    with errors_with_flags(args):
        settings = llc_run.LLCSettings(
            chains=args.chains, draws=args.draws, burnin=args.burnin, step_size=args.step_size, nbeta=args.nbeta,
            localization=args.localization, batch_size=args.batch_size, data_size=args.data_size, seed=args.seed,
            score=args.score, per_position=args.per_position, mala_every=args.mala_every,
        ).resolved(run_info.config.model)
    results = llc_run.run(args.run_dir, settings, checkpoints=args.checkpoints, backend=args.backend,
                          out_dir=args.out, quiet=args.quiet)
    print(llc_run.format_table(results["table"]))
    figure = f" and {results['figure']}" if results.get("figure") else " (no figure: matplotlib is not installed)"
    print(f"\nwrote {results['out']}/{llc_run.RESULT_FILE}{figure}; one step_<step>.json per checkpoint")
    diverged = [row["step"] for row in results["table"] if row["diverged"]]
    if diverged:
        print(f"iclgd: the SGLD chains diverged at step{'s' if len(diverged) > 1 else ''} {', '.join(map(str, diverged))} "
              "(their files say where): lower --step-size or --nbeta, or raise --localization, in another --out",
              file=sys.stderr)
    return results["exit_code"]


def _add_llc_parser(commands, command) -> None:
    import textwrap

    from iclgd.analysis.llc import SCORES, default_burnin
    from iclgd.experiments import llc_run

    t, lsa, paper = llc_run.TRANSFORMER_DEFAULTS, llc_run.LSA_DEFAULTS, llc_run.PAPER

    def default(name: str, transformer: str | None = None, lsa_text: str | None = None) -> str:
        t_text = transformer if transformer is not None else _shown(t[name])
        l_text = lsa_text if lsa_text is not None else _shown(lsa[name])
        paper_text = f"; the paper's: {_shown(paper[name])}" if name in paper and paper[name] != t[name] else ""
        if t_text == l_text:
            return f"(default: {t_text}{paper_text})"
        return f"(default: {t_text} for a transformer run{paper_text}, {l_text} for the LSA families)"

    llc = command(commands, "llc", "estimate the local learning coefficient (LLC) of a run's checkpoints by SGLD, over training")
    llc.description = "\n\n".join(textwrap.fill(paragraph, 78) for paragraph in (
        "Estimate lambda-hat at each checkpoint of a training run (iclgd.analysis.llc.estimate_llc: SGLD localised at "
        "the checkpoint's parameters), on one data set shared by every checkpoint: --data-size sequences of the run's "
        f"own task drawn from {llc_run.DATA_STREAM}. Writes OUT/step_<step>.json per checkpoint, then OUT/llc.json "
        "(the table) and OUT/llc.png (lambda-hat and the MALA acceptance against training step; the per-position LLCs). "
        "Rerunning the same command skips the checkpoints already estimated.",
        "Defaults for a transformer run are the developmental-landscape paper's SGLD (the authors' sweep config, "
        f"timaeus-research/icl): step size {paper['step_size']:g}, nbeta = 2 x {paper['gradient_scale']:g} / eps = "
        f"{paper['nbeta']:.4g} (their gradient scale eps nbeta / 2 = {paper['gradient_scale']:g}), localization "
        f"gamma = 2 x {paper['localization_scale']:g} / eps = {paper['localization']:.4g} (their localization scale "
        f"eps gamma / 2 = {paper['localization_scale']:g}), minibatch {paper['batch_size']}, score "
        f"'{paper['score']}', per-position on; but {t['chains']} chains x {t['draws']} draws after {default_burnin(t['step_size'], t['localization'])} burn-in "
        f"steps instead of the paper's {paper['chains']} x {paper['draws']} without burn-in, minibatch {t['batch_size']} instead of "
        f"{paper['batch_size']} and the MALA acceptance of every {t['mala_every']}th draw, so that a checkpoint of the paper's model "
        "takes about a minute on a 2-core "
        "CPU with jax (see iclgd.experiments.llc_run for the measurements). The paper's protocol: --chains 10 --draws 5000 "
        "--burnin 0 --batch-size 1024 --mala-every 1. The LSA families (lsa, gd, gdpp) take estimate_llc's "
        "own defaults."))
    llc.add_argument("--run", dest="run_dir", metavar="DIR", required=True,
                     help="the run directory (written by `iclgd train --out DIR`): config.toml and checkpoints/step_*.npz")
    llc.add_argument("--checkpoints", default=None, metavar="all|STEP,STEP,..",
                     help="'all', or comma-separated steps of the run's checkpoints (default: all)")
    llc.add_argument("--chains", type=int, default=None, help="SGLD chains per checkpoint " + default("chains"))
    llc.add_argument("--draws", type=int, default=None, help="draws per chain that are counted " + default("draws"))
    burnin = "ceil(2 / (step size x localization))"
    llc.add_argument("--burnin", type=int, default=None,
                     help=f"steps per chain run before the draws, not counted (default: {burnin}, estimate_llc's: "
                          f"{default_burnin(t['step_size'], t['localization'])} for a transformer run, "
                          f"{default_burnin(lsa['step_size'], lsa['localization'])} for the LSA families)")
    llc.add_argument("--step-size", type=float, default=None, help="SGLD step size eps " + default("step_size"))
    llc.add_argument("--nbeta", type=float, default=None,
                     help="inverse temperature nbeta " + default("nbeta", f"{t['nbeta']:.6g} = 2 x {paper['gradient_scale']:g} / {paper['step_size']:g}",
                             "n / log n of the data set"))
    llc.add_argument("--localization", type=float, default=None,
                     help="localization strength gamma " + default("localization", f"{t['localization']:.6g} = 2 x {paper['localization_scale']:g} / {paper['step_size']:g}"))
    llc.add_argument("--batch-size", type=int, default=None,
                     help="sequences per SGLD step, drawn with replacement; at least --data-size means the whole data set "
                          + default("batch_size"))
    llc.add_argument("--data-size", type=int, default=None,
                     help=f"sequences in the LLC data set (default: {llc_run.DEFAULT_DATA_SIZE})")
    llc.add_argument("--seed", type=int, default=None,
                     help=f"seed of the data set's stream and of the chains' streams (default: {llc_run.DEFAULT_SEED})")
    llc.add_argument("--score", default=None,
                     help=f"what each draw records: {', '.join(SCORES)} (see iclgd.analysis.llc) " + default("score"))
    llc.add_argument("--per-position", action=argparse.BooleanOptionalAction, default=None,
                     help="also estimate the LLC of each position's loss (transformer runs only; default: on for a "
                          "transformer run, off for the LSA families)")
    llc.add_argument("--mala-every", type=int, default=None,
                     help="record the MALA acceptance of every k-th draw; 0: never, which halves the draws' work "
                          + default("mala_every"))
    llc.add_argument("--backend", default=None,
                     help="numpy, numba (LSA families) or jax (default: the fastest installed that computes the run's model: "
                          "jax, else numpy, for a transformer; numba, else jax, else numpy, for the LSA families)")
    llc.add_argument("--out", default=None,
                     help="output folder, resumed if it holds estimates made with the same settings (default: DIR/llc)")
    llc.add_argument("--quiet", action="store_true", help="no progress lines (the estimates' warnings are still printed)")
    llc.set_defaults(run=_llc)


def _bench(args: argparse.Namespace) -> int:
    from iclgd import bench

    backends = args.backends.split(",") if args.backends else None
    layers = tuple(int(n) for n in args.layers.split(","))
    numba_threads = tuple(int(n) for n in args.numba_threads.split(",")) if args.numba_threads else None
    results = bench.run(backends, layers=layers, dtypes=tuple(args.dtypes.split(",")), repeats=args.repeats,
                        contended=args.contended, spinners=args.spinners, numba_threads=numba_threads, choose=args.choose)
    json_path, md_path = bench.write(results, args.out)
    print(bench.markdown(results))
    print(f"wrote {json_path} and {md_path}")
    return 0


def default_out(name: str, quick: bool) -> str:
    """Where a reproduce run writes without --out: runs/NAME, or runs/quick/NAME for a smoke run."""
    return f"runs/quick/{name}" if quick else f"runs/{name}"


def _reproduction(args: argparse.Namespace, module, setting_class, name: str, changes: dict, evaluated=None) -> int:
    """Build the setting (full, or ``quick`` with --quick) from the flags given, check that its
    evaluations fit in memory (``evaluated(setting)``: the task and the deepest model it evaluates),
    run the experiment into --out (or its default folder), print its table; the exit code is the
    experiment's."""
    changes = {key: value for key, value in changes.items() if value is not None}
    with errors_with_flags(args):
        setting = setting_class.quick(**changes) if args.quick else setting_class(**changes)
    if evaluated is not None:
        _check_evaluations(setting, *evaluated(setting))
    out = args.out or default_out(name, args.quick)
    if not args.quiet:
        print(f"backend: {setting.backend}", file=sys.stderr, flush=True)
    results = module.run(out, setting, quiet=args.quiet)
    print(module.table(results))
    print(f"\nwrote {out}/results.json, report.md and {len(results['figures'])} figures")
    return module.exit_code(results)


#: The flags of the settings' task counts (the others are the setting's own, with no flag).
COUNT_FLAGS = {"val_tasks": "--val-tasks"}


def _check_evaluations(setting, task, lsa) -> None:
    """Refuse a reproduction whose evaluations (validation, line search, head to head) cannot fit
    in memory, naming the flag (--val-tasks) or the setting's field; before anything is written."""
    from iclgd import limits

    for field in getattr(setting, "TASK_COUNTS", ("val_tasks",)):
        n_tasks, flag = getattr(setting, field), COUNT_FLAGS.get(field)
        subject = f"{flag} {n_tasks}" if flag else f"{field} = {n_tasks} (the setting's)"
        limits.check_bytes(subject, limits.evaluation_bytes(task, lsa, n_tasks),
                           f"evaluating {limits.lsa_shape_text(lsa, n_tasks, task.n_context)} at once")


def _reproduce(args: argparse.Namespace) -> int:
    from iclgd.experiments import one_layer

    changes = {"steps": args.steps, "seed": args.seed, "x_scale": args.x_scale, "backend": args.backend,
               "val_tasks": args.val_tasks, "sampler": args.sampler}
    evaluated = lambda setting: (setting.run_config().task, setting.run_config().model)  # noqa: E731
    return _reproduction(args, one_layer, one_layer.OneLayerSetting, "one-layer", changes, evaluated)


def _reproduce_multi_layer(args: argparse.Namespace) -> int:
    from iclgd.experiments import multi_layer

    depths = _depths(args.layers)
    if depths is not None:
        _check_depths(args, multi_layer.MultiLayerSetting, depths)
    changes = {"layers": depths, "tied": args.tied or None, "steps_per_layer": args.steps_per_layer,
               "baseline_steps": args.baseline_steps, "seed": args.seed, "backend": args.backend,
               "val_tasks": args.val_tasks, "x_scale": args.x_scale}
    name = "multi-layer-tied" if args.tied else "multi-layer"
    evaluated = lambda setting: (setting.task, setting.run_config(max(setting.layers), "lsa").model)  # noqa: E731
    return _reproduction(args, multi_layer, multi_layer.MultiLayerSetting, name, changes, evaluated)


def _reproduce_ood(args: argparse.Namespace) -> int:
    from iclgd.experiments import ood

    changes = {"steps": args.steps, "seed": args.seed, "backend": args.backend, "val_tasks": args.val_tasks,
               "x_scale": args.x_scale}
    evaluated = lambda setting: (setting.task(), setting.run_config("clean").model)  # noqa: E731
    return _reproduction(args, ood, ood.OODSetting, "ood", changes, evaluated)


def _reproduce_stages(args: argparse.Namespace) -> int:
    """`iclgd reproduce stages`: the setting of --scale (or --quick's), then the experiment."""
    from iclgd.experiments import stages

    changes = {key: value for key, value in {"seeds": args.seeds, "seed": args.seed, "backend": args.backend}.items()
               if value is not None}
    with errors_with_flags(args):
        setting = stages.StagesSetting.for_scale(args.scale, quick=args.quick, **changes)
    out = args.out or default_out("stages" if args.scale == "laptop" else f"stages-{args.scale}", args.quick)
    if not args.quiet:
        print(f"backend: {setting.backend}; scale: {setting.scale}{' (smoke run)' if args.quick else ''}", file=sys.stderr, flush=True)
    results = stages.run(out, setting, quiet=args.quiet)
    print(stages.table(results))
    print(f"\nwrote {out}/results.json, report.md and {len(results['figures'])} figures")
    return stages.exit_code(results)


def _reproduce_task_prior(args: argparse.Namespace) -> int:
    """`iclgd reproduce task-prior`: the finite-pool sweep M = 1, 2, .., 2^K and infinity."""
    from iclgd.experiments import task_prior

    changes = {key: value for key, value in {"seed": args.seed, "backend": args.backend,
                                             "max_log2_tasks": args.max_log2_tasks}.items() if value is not None}
    with errors_with_flags(args):
        setting = (task_prior.TaskPriorSetting.quick(**changes) if args.quick else task_prior.TaskPriorSetting(**changes))
    out = args.out or default_out("task-prior", args.quick)
    if not args.quiet:
        print(f"backend: {setting.backend}; M up to 2^{setting.max_log2_tasks} and infinity"
              f"{' (smoke run)' if args.quick else ''}", file=sys.stderr, flush=True)
    results = task_prior.run(out, setting, quiet=args.quiet)
    print(task_prior.table(results))
    print(f"\nwrote {out}/results.json, report.md and {len(results['figures'])} figures")
    return task_prior.exit_code(results)


def _reproduce_stack_claim(args: argparse.Namespace) -> int:
    """A reproduce command of the attention-stack models (softmax-vs-linear, interleaved, sine):
    the flags set the setting's fields of the same names."""
    module, setting_class, name = args.stack_claim
    changes = {field: getattr(args, field) for field in args.stack_fields}
    return _reproduction(args, module, setting_class, name, changes)


def _add_stack_claim(claims, command, name: str, module, setting_class, help_text: str, options: list[tuple[str, type, str]]) -> None:
    """`iclgd reproduce NAME` for an experiment of the attention-stack models: --out, --backend
    (numpy or jax: the engines of iclgd.train.stack_training), --seed, --x-scale where the setting
    has one, ``options`` ((field, type, help)), --quick, --quiet."""
    full, quick = setting_class(), setting_class.quick()
    parser = command(claims, name, help_text)
    where = f"{default_out(name, False)}, or {default_out(name, True)} with --quick"
    parser.add_argument("--out", default=None, help=f"run folder, resumed if it holds an unfinished run (default: {where})")
    parser.add_argument("--backend", default=None, help=f"the training engine, numpy or jax (default: jax when installed, here {full.backend})")
    parser.add_argument("--seed", type=int, default=None, help="seed of the training runs and the tasks " + default_text(full, None, "seed"))
    fields = ["backend", "seed"]
    if hasattr(full, "x_scale"):
        parser.add_argument("--x-scale", type=_x_scale, default=None,
                            help="a in x ~ U(-a, a): a number, 'paper' (1) or 'authors_code' (0.5) " + default_text(full, None, "x_scale"))
        fields.append("x_scale")
    for field, kind, text in options:
        parser.add_argument("--" + field.replace("_", "-"), type=kind, default=None, help=f"{text} {default_text(full, quick, field)}")
        fields.append(field)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of seconds (short training, small evaluations) judged by weaker checks, not the paper's claims")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, no backend line")
    parser.set_defaults(run=_reproduce_stack_claim, stack_claim=(module, setting_class, name), stack_fields=fields)


def _depths(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--layers must be comma-separated positive integers such as 1,2,3; got {text!r}") from None


def _check_depths(args: argparse.Namespace, setting_class, depths: tuple[int, ...]) -> None:
    """Refuse --layers depths beyond limits.MAX_LAYERS, or whose deepest model cannot train in
    memory at the setting's batch size, naming --layers (before the setting trains anything)."""
    from iclgd import limits
    from iclgd.models import LSAConfig

    text = ",".join(map(str, depths)) if len(depths) <= 8 else f"{','.join(map(str, depths[:3]))},...,{depths[-1]} ({len(depths)} depths)"
    for depth in depths:
        if depth > limits.MAX_LAYERS:
            raise ValueError(f"--layers must be depths K <= {limits.MAX_LAYERS}; got {depth} in {text}")
    deepest = max(depths)
    if deepest < 1:
        return  # the setting says what a depth must be
    defaults = setting_class.quick() if args.quick else setting_class()
    task = defaults.task
    lsa = LSAConfig(d=task.d, n_layers=deepest, n_heads=1, tied=args.tied, n_context=task.n_context)
    limits.check_bytes(f"--layers {text}", limits.training_step_bytes(task, lsa, defaults.batch_size),
                       f"training the deepest model ({limits.lsa_shape_text(lsa, defaults.batch_size, task.n_context)})")


def _x_scale(text: str) -> float:
    from iclgd.tasks import resolve_x_scale

    try:
        return resolve_x_scale(float(text))
    except ValueError:
        try:
            return resolve_x_scale(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix("x_scale ")) from None  # argparse names the flag


# --- the parser -------------------------------------------------------------------------------------------


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(_shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def default_text(full, quick, name: str) -> str:
    """"(default: F)" from the full setting ``full``, plus "; Q with --quick" where ``quick`` differs."""
    text = _shown(getattr(full, name))
    if quick is not None and getattr(quick, name) != getattr(full, name):
        text += f"; {_shown(getattr(quick, name))} with --quick"
    return f"(default: {text})"


def _add_reproduce_options(parser: argparse.ArgumentParser, full, quick, name: str, options: list[tuple[str, str]]) -> None:
    """The options every reproduce command shares, then ``options`` ((field, help) pairs: an integer
    --FIELD); ``full`` and ``quick`` are the command's default settings, whose values the help shows."""
    from iclgd.backends import fastest_backend

    where = f"{default_out(name, False)}, or {default_out(name, True)} with --quick"
    parser.add_argument("--out", default=None, help=f"run folder, resumed if it holds an unfinished run (default: {where})")
    parser.add_argument("--backend", default=None,
                        help=f"numpy, numba or jax (default: the fastest installed, here {fastest_backend()})")
    parser.add_argument("--seed", type=int, default=None, help="seed of the training runs and the tasks " + default_text(full, None, "seed"))
    parser.add_argument("--x-scale", type=_x_scale, default=None,
                        help="a in x ~ U(-a, a): a number, 'paper' (1) or 'authors_code' (0.5) " + default_text(full, None, "x_scale"))
    for field, text in options:
        parser.add_argument("--" + field.replace("_", "-"), type=int, default=None, help=f"{text} {default_text(full, quick, field)}")
    parser.add_argument("--val-tasks", type=int, default=None, help="validation tasks " + default_text(full, quick, "val_tasks"))
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of seconds (short training, small evaluations) judged by weaker checks, not the paper's claims")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, no backend line")


def build_parser() -> argparse.ArgumentParser:
    from iclgd import bench
    from iclgd.experiments import attention_kinds, interleaved, multi_layer, one_layer, ood, sine

    parser = argparse.ArgumentParser(
        prog="iclgd", description="Transformers learn in context by gradient descent: executable and checkable.",
        epilog=EPILOG, formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(parent, name: str, help: str) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=help, description=help, epilog="exit codes: see iclgd --help",
                                 formatter_class=HelpFormatter)

    check = command(commands, "check", "verify the oracle's identities (construction = GD, gradients, optimum)")
    check.add_argument("--seed", type=int, default=0, help="seed of the random configurations and tasks")
    check.add_argument("--tasks", type=int, default=200_000, help="Monte Carlo tasks for the optimum check")
    check.set_defaults(run=_check)

    train = command(commands, "train", "train a model (an LSA, GD/GD++ with learned rates, or the developmental-landscape transformer) from a TOML config ([task], [model], [train])")
    train.add_argument("--config", required=True, help="TOML file")
    train.add_argument("--out", required=True, help="run directory (resumed if it holds an unfinished run)")
    train.add_argument("--set", action="append", default=None, metavar="TABLE.KEY=VALUE",
                       help="override one key of the config, e.g. --set train.lr=0.002 (a TOML value; repeatable; "
                            "validated as the file is; default: none)")
    train.add_argument("--backend", default=None, help="override [train] backend: numpy, numba or jax (default: the config's)")
    train.add_argument("--sampler", default=None,
                       help="override [train] sampler: numpy (host, same on every backend), jax (inside jax's step) "
                            "or philox (drawn by numba) (default: the config's)")
    train.add_argument("--seeds", type=int, default=None,
                       help="train this many seeds (seed, seed+1, ...) into OUT/seed_S; one vmapped program on jax (default: one run in OUT)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    reproduce = command(commands, "reproduce", "reproduce a claim of the paper")
    claims = reproduce.add_subparsers(dest="claim", metavar="CLAIM", required=True)
    one = command(claims, "one-layer", "a trained LSA layer = one GD step with the best rate (the main job)")
    _add_reproduce_options(one, one_layer.OneLayerSetting(), one_layer.OneLayerSetting.quick(), "one-layer",
                           [("steps", "training steps")])
    one.add_argument("--sampler", default=None,
                     help="numpy (host; the same tasks on every backend), jax (inside jax's step; --backend jax) or "
                          "philox (drawn by numba; --backend numba) (default: numpy)")
    one.set_defaults(run=_reproduce)

    deep = command(claims, "multi-layer", "K-layer (or recurrent) LSA against K steps of GD and GD++")
    full, quick = multi_layer.MultiLayerSetting(), multi_layer.MultiLayerSetting.quick()
    _add_reproduce_options(deep, full, quick, "multi-layer", [
        ("steps_per_layer", f"the K-layer LSA trains {full.steps_base} + this * K steps ({quick.steps_base} + this * K with --quick)"),
        ("baseline_steps", "learned-rate GD/GD++ training steps"),
    ])
    deep.add_argument("--layers", default=None, help="comma-separated depths K " + default_text(full, quick, "layers"))
    deep.add_argument("--tied", action="store_true",
                      help="recurrent LSA (one weight set) and shared GD/GD++ rates; default folder runs/multi-layer-tied")
    deep.set_defaults(run=_reproduce_multi_layer)

    shift = command(claims, "ood", "trained LSA layers and GD out of distribution: input scale, input law, distractors")
    _add_reproduce_options(shift, ood.OODSetting(), ood.OODSetting.quick(), "ood", [("steps", "training steps of each model")])
    shift.set_defaults(run=_reproduce_ood)

    stage = command(claims, "stages", "developmental stages: LLC over training (two SGLD protocols), essential dynamics, stage boundaries")
    stage.add_argument("--scale", choices=("laptop", "paper"), default="laptop",
                       help="laptop: the paper's model, 40k steps at batch 64, 26 checkpoints, < 1 hour on 2 CPU cores "
                            "with jax; paper: 500k steps at batch 256, 190 checkpoints, 10 x 5000 SGLD draws, 5 seeds "
                            "(for a GPU) (default: laptop)")
    stage.add_argument("--seeds", type=int, default=None, help="training seeds (default: 1 at laptop scale, 5 at paper scale)")
    stage.add_argument("--seed", type=int, default=None, help="the first seed (default: 0)")
    stage.add_argument("--backend", default=None, help="numpy or jax (default: jax when installed; numpy with --quick)")
    stage.add_argument("--out", default=None,
                       help="run folder, resumed if it holds an unfinished run (default: runs/stages, runs/stages-paper "
                            "with --scale paper, runs/quick/... with --quick)")
    stage.add_argument("--quick", action="store_true",
                       help="a smoke run of seconds (a tiny model) judged by weaker checks, not the paper's claims")
    stage.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    stage.set_defaults(run=_reproduce_stages)

    prior = command(claims, "task-prior", "task diversity: trained on M tasks, the transformer tracks dMMSE at small M, ridge at large M")
    prior.add_argument("--max-log2-tasks", type=int, default=None,
                       help="sweep M = 1, 2, 4, .., 2^K and infinity (default: 8; 1 with --quick)")
    prior.add_argument("--seed", type=int, default=None, help="the training seed (default: 0)")
    prior.add_argument("--backend", default=None, help="numpy or jax (default: jax when installed; numpy with --quick)")
    prior.add_argument("--out", default=None,
                       help="run folder, one run per M, resumed if unfinished (default: runs/task-prior, runs/quick/task-prior with --quick)")
    prior.add_argument("--quick", action="store_true",
                       help="a smoke run of seconds (a tiny model, M in {1, 2, inf}) judged by weaker checks, not the papers' claims")
    prior.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    prior.set_defaults(run=_reproduce_task_prior)

    _add_stack_claim(claims, command, "softmax-vs-linear", attention_kinds, attention_kinds.AttentionKindsSetting,
                     "softmax against linear self-attention (1-3 layers, with and without LayerNorm) against GD and GD++",
                     [("steps", int, "training steps of each model"), ("capacity_heads", int, "heads of the larger softmax model"),
                      ("val_tasks", int, "validation tasks")])

    _add_stack_claim(claims, command, "interleaved", interleaved, interleaved.InterleavedSetting,
                     "x and y in separate tokens: a softmax layer learns to copy y_i into x_i's token, a linear layer then does one GD step",
                     [("steps", int, "training steps"), ("batch_size", int, "tasks per training step"), ("lr", float, "Adam rate"),
                      ("eval_tasks", int, "validation tasks"), ("copy_tasks", int, "tasks of the copy sensitivities (at most --eval-tasks)"),
                      ("tune_tasks", int, "training tasks of GD's rate search")])

    _add_stack_claim(claims, command, "sine", sine, sine.SineSetting,
                     "sine regression: a learned MLP embedding + one LSA layer against the same embedding under a fixed GD step",
                     [("draws", str, "amplitude and phase: 'authors' (one uniform gives both: perfectly correlated) or 'independent'"),
                      ("model_steps", int, "training steps of the model"), ("mlp_gd_steps", int, "training steps of MLP+GD's embedding"),
                      ("batch_size", int, "tasks per training step"), ("model_lr", float, "Adam rate of the model"),
                      ("mlp_gd_lr", float, "Adam rate of MLP+GD's embedding"), ("eval_tasks", int, "validation tasks")])

    _add_llc_parser(commands, command)

    bench_parser = command(commands, "bench", "time every installed backend on the same work, checked against the oracle")
    bench_parser.add_argument("--out", default=bench.DEFAULT_OUT,
                              help="folder for bench.json and bench.md (the recorded results: benchmarks/results)")
    bench_parser.add_argument("--backends", default=None, help="comma-separated (default: every installed one)")
    bench_parser.add_argument("--layers", default="1,4", help="comma-separated model depths")
    bench_parser.add_argument("--dtypes", default="float32,float64", help="comma-separated")
    bench_parser.add_argument("--repeats", type=int, default=30, help="timed repeats of each operation (the median is reported)")
    bench_parser.add_argument("--contended", action="store_true",
                              help="time everything again while busy-loop processes keep every core busy; report both")
    bench_parser.add_argument("--spinners", type=int, default=None,
                              help="busy-loop processes for --contended (default: one per usable core)")
    bench_parser.add_argument("--numba-threads", default=None,
                              help="comma-separated thread counts to time numba at, e.g. 1,2 (default: numba's current count)")
    bench_parser.add_argument("--choose", action="store_true",
                              help="also record what iclgd.backends.choice.choose_backend picks under each load")
    bench_parser.set_defaults(run=_bench)
    return parser


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so that Python's final flush into a closed pipe is quiet."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real stdout (a test's capture): nothing to flush
        pass


class _Terminated(BaseException):
    """SIGTERM outside a training loop (which handles it itself, as RunInterrupted)."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While a command runs in the main thread, SIGTERM raises _Terminated, so the command stops
    between two Python operations (files are written atomically) and exits 143 with one line."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(_signal_number, _frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the command; its exit code (EPILOG) is returned, and every failure is one line on stderr."""
    from iclgd.train import RunInterrupted, TrainingDiverged

    try:
        parser = build_parser()  # builds the default settings, which check themselves
    except (ValueError, ImportError) as error:
        print(f"iclgd: error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        with _sigterm_as_interrupt():
            return args.run(args)
    except RunInterrupted as error:
        print(f"iclgd: {error}", file=sys.stderr)
        return error.exit_code
    except _Terminated:
        print("iclgd: terminated; rerun the same command to resume", file=sys.stderr)
        return 128 + int(signal.SIGTERM)
    except KeyboardInterrupt:
        print("iclgd: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_SIGINT
    except TrainingDiverged as error:
        print(f"iclgd: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError as error:
        if error.filename is not None:
            print(f"iclgd: error: {os_error_line(error)}", file=sys.stderr)
            return EX_IOERR
        _silence_stdout()
        return EXIT_SIGPIPE
    except OSError as error:
        print(f"iclgd: error: {os_error_line(error)}", file=sys.stderr)
        return EX_IOERR
    except (ValueError, ImportError) as error:
        print(f"iclgd: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
