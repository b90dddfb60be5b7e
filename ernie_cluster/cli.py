"""`python -m ernie_cluster {validate,render,submit,status,logs,cancel,plot,pretrained}`.

Exit status: 0 success, 1 runtime failure, 2 bad input (spec, overrides, refused submission), 130 interrupted.
This module and everything it imports at the top stays light: no paddle on the login node.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

# The CLI uses no pydantic plugin; looking for them scans every installed package's metadata at the
# first model class (about 45 ms of each `render`). An explicit setting by the user still wins.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from .spec import JobSpec, SpecError, SpecProblem, load_spec  # noqa: E402

if TYPE_CHECKING:
    from .render import RenderedRun

EXIT_BAD_INPUT = 2


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="job spec YAML, e.g. jobs/ernie_dapt.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides parsed as YAML scalars, e.g. train.max_steps=1000 resources.nodes=2")
    p.add_argument("--skip-path-checks", action="store_true",
                   help="do not require data/model paths to exist here (render and submit --dry-run only warn)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ernie_cluster", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a spec; print every problem with its YAML line")
    _add_spec_args(p)

    p = sub.add_parser("render", help="print exactly what would be submitted; submits nothing")
    _add_spec_args(p)
    p.add_argument("--sbatch", action="store_true", help="print only the plain sbatch scripts from ernie_cluster/templates/")
    p.add_argument("--out", help="also write the sbatch scripts into this directory")

    p = sub.add_parser("submit", help="create the run directory and submit training + conversion")
    _add_spec_args(p)
    p.add_argument("--dry-run", action="store_true", help="same as render: print, submit nothing")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="reuse an existing run directory and continue from its checkpoints")
    mode.add_argument("--force", action="store_true", help="start over in an existing run directory (the old run is moved aside)")
    p.add_argument("--new-code", action="store_true",
                   help="with --resume: continue with the code installed now although it differs from the code the "
                        "run was submitted with (frozen again in the run directory); without it such a resume is refused")
    p.add_argument("--preempt-after", type=float, metavar="SECONDS",
                   help="local backend only: send the preemption warning once, SECONDS after training started")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="local backend: stream the jobs' whole output (also in RUN/logs/local<pid>.out) instead of "
                        "the live view")

    for name, text in (("status", "show the jobs, attempts, checkpoint and converted model of a run"),
                       ("logs", "print the run's Slurm and trainer logs"),
                       ("cancel", "stop the run: training checkpoints first, conversion never runs")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run_dir", help="the run directory (the spec's output_dir)")
        if name == "status":
            shown = p.add_mutually_exclusive_group()
            shown.add_argument("--json", action="store_true")
            shown.add_argument("--follow", "-f", action="store_true",
                               help="a live view until the run ends (exit 0 when it completed), then a summary")
        if name == "logs":
            p.add_argument("--follow", "-f", action="store_true")
            p.add_argument("--lines", "-n", type=int, default=40)
        if name == "cancel":
            p.add_argument("--grace", type=float, default=180.0, metavar="SECONDS",
                           help="how long running training may take to checkpoint before scancel (default 180)")
            p.add_argument("--now", action="store_true", help="scancel at once, without a checkpoint")

    p = sub.add_parser("plot", help="write a PNG of loss and learning rate over steps across all attempts, with "
                                    "stops, requeues and resumes marked and samples/s per attempt")
    p.add_argument("run_dir", help="the run directory (the spec's output_dir)")
    p.add_argument("--out", help="where to write the PNG (default RUN_DIR/plot.png)")

    from .pretrained import add_arguments as pretrained_arguments  # paddle-free; paddlenlp only when it runs

    p = sub.add_parser("pretrained", help="write a verified local copy of a released model (e.g. ernie-1.0-base-zh) "
                                          "to start DAPT from; run it where PaddleNLP's hosting is reachable")
    pretrained_arguments(p)
    return parser


def _previewing(args: argparse.Namespace) -> bool:
    """render and submit --dry-run show what would be submitted, also from a machine without the spec's paths."""
    return args.command == "render" or bool(getattr(args, "dry_run", False))


def _load(args: argparse.Namespace, path_warnings: List[SpecProblem]) -> JobSpec:
    return load_spec(args.spec, args.overrides, check_paths=not args.skip_path_checks,
                     path_warnings=path_warnings if _previewing(args) else None)


def _warn(args: argparse.Namespace, warnings: List[str], *, refused: bool = False) -> None:
    for text in warnings:
        print(f"warning: {text}", file=sys.stderr)
    if warnings and not refused:
        print(f"warning: {'render' if args.command == 'render' else 'submit --dry-run'} prints the scripts anyway; "
              f"validate and submit refuse "
              f"{'this' if len(warnings) == 1 else 'these'} (exit 2)", file=sys.stderr)


def _check_partition(spec: JobSpec) -> Optional[str]:
    """When Slurm answers, the partitions must exist there."""
    from . import slurm

    wanted = {p for p in (spec.cluster.partition, spec.cluster.convert_partition) if p}
    if spec.cluster.backend != "slurm" or not wanted:
        return None
    names = slurm.sinfo_partitions()
    if isinstance(names, slurm.NoAnswer):  # no sinfo here, or it failed: nothing to check against
        return None
    known = {name.rstrip("*") for name in names}
    unknown = sorted(wanted - known)
    if unknown:
        return f"cluster.partition: {', '.join(unknown)} not in this cluster's partitions: {', '.join(sorted(known))}"
    return None


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    # Overrides may follow options too (`render SPEC --sbatch train.max_steps=5`).
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        if args.command == "pretrained":
            from .pretrained import run as pretrained_run

            return pretrained_run(args)
        if args.command == "plot":
            return _plot(args)
        if args.command in ("validate", "render", "submit"):
            path_warnings: List[SpecProblem] = []
            try:
                spec = _load(args, path_warnings)
            except SpecError:
                _warn(args, [w.render(args.spec) for w in path_warnings], refused=True)
                raise
            warnings = [w.render(args.spec) for w in path_warnings]
            problem = _check_partition(spec)
            if problem and _previewing(args):
                warnings.append(f"{args.spec}: {problem}")
            elif problem:
                print(f"invalid job spec {args.spec}:\n  {args.spec}: {problem}", file=sys.stderr)
                return EXIT_BAD_INPUT
            _warn(args, warnings)
            return _run_spec_command(args, spec)
        return _run_dir_command(args)
    except SpecError as exc:
        print(exc.report(), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


def _run_spec_command(args: argparse.Namespace, spec: JobSpec) -> int:
    from .render import render

    if args.command == "validate":
        r = spec.resources
        shapes = "; ".join(f"{n} node(s): dp {p.dp_degree}, accumulate {p.accumulate_steps}" for n in r.node_counts
                           for p in [spec.batch_plan(world_size=n * r.trainers_per_node)]) if r.elastic else \
            f"dp {spec.dp_degree}, accumulate {spec.accumulate_steps}"
        print(f"{args.spec}: valid. {r.nodes} node(s) x {r.trainers_per_node} trainer(s), engine "
              f"{spec.train.resolved_engine}, global batch {spec.global_batch_size} ({shapes}), run directory "
              f"{spec.run_dir()}; starts from {spec.starts_from()}")
        return 0
    if args.command == "render" or args.dry_run:
        rendered = render(spec)
        print(rendered.describe(sbatch_only=getattr(args, "sbatch", False)))
        if getattr(args, "out", None):
            _write_rendered(rendered, Path(args.out))
        return 0
    from .submit import SubmitError, submit_local, submit_slurm

    if args.new_code and not args.resume:
        print("--new-code goes with --resume (a new submission always freezes the code installed now)", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        if spec.cluster.backend == "local":
            from .console import watching_local_submit

            with watching_local_submit(spec.run_dir(), verbose=args.verbose):
                sub = submit_local(spec, resume=args.resume, force=args.force, new_code=args.new_code,
                                   preempt_after_s=args.preempt_after)
        else:
            if args.preempt_after is not None:
                print("--preempt-after is for the local backend; on Slurm, preemption comes from Slurm", file=sys.stderr)
                return EXIT_BAD_INPUT
            if args.verbose:  # accepted, but say what it does here rather than ignore it
                print("--verbose: a Slurm job's output is in the run directory; follow it with `status RUN "
                      "--follow` or `logs RUN --follow`", file=sys.stderr)
            sub = submit_slurm(spec, resume=args.resume, force=args.force, new_code=args.new_code)
    except SubmitError as exc:
        print(f"submit refused: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if sub.backend == "slurm":
        print(f"run directory: {sub.run_dir}")
        print(f"code {sub.code}")
        print(f"training job: {sub.train_job_id}")
        if sub.convert_job_id:
            print(f"conversion job: {sub.convert_job_id} (afterok:{sub.train_job_id})")
        print(f"follow it with: python -m ernie_cluster status {sub.run_dir}")
        return 0
    from .rundir import RunDir
    from .runs import collect_status

    status = collect_status(RunDir(sub.run_dir))
    return 0 if status.jobs and status.jobs[0]["state"] == "COMPLETED" else 1


def _write_rendered(rendered: RenderedRun, out: Path) -> None:
    """`render --out DIR`: the sbatch scripts and submit.sh, ready for a plain sbatch submission."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.sbatch").write_text(rendered.train_sbatch)
    if rendered.convert_sbatch:
        (out / "convert.sbatch").write_text(rendered.convert_sbatch)
    (out / "submit.sh").write_text(rendered.submit_sh)
    (out / "submit.sh").chmod(0o755)
    # Slurm opens --output before the script runs, so its directory must exist already (submit.sh
    # creates it too: the run directory may not be writable from the machine that renders).
    try:
        (rendered.run_dir / "slurm").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"warning: cannot create {rendered.run_dir}/slurm here ({exc.strerror}); submit.sh creates it",
              file=sys.stderr)
    print(f"# wrote {out}/train.sbatch{', convert.sbatch' if rendered.convert_sbatch else ''} and submit.sh; "
          f"submit with: {out}/submit.sh (or sbatch them yourself)", file=sys.stderr)


def _plot(args: argparse.Namespace) -> int:
    from .plot import PlotError, plot_run  # matplotlib only inside plot_run

    try:
        result = plot_run(args.run_dir, args.out)
    except PlotError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {result['out']}")
    for mark in result["marks"]:
        print(f"  {mark['kind']:<8} step {mark['step']}: {mark['label']}")
    for t in result["throughput"]:
        value = t["median_samples_per_s"]
        print(f"  {t['attempt']}: median {value:.1f} samples/s" if value is not None else f"  {t['attempt']}: no steps")
    return 0


def _run_dir_command(args: argparse.Namespace) -> int:
    from .runs import RunNotFound, cancel_run, collect_status, open_run, print_status, show_logs

    try:
        run = open_run(args.run_dir)
    except RunNotFound as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.command == "status":
        if args.follow:
            from .console import follow_run

            return follow_run(run)
        print_status(collect_status(run), as_json=args.json)
    elif args.command == "logs":
        show_logs(run, follow=args.follow, lines=args.lines)
    elif args.command == "cancel":
        cancelled = cancel_run(run, grace_s=0.0 if args.now else args.grace, log=print)
        print("cancelled: " + (", ".join(cancelled) if cancelled else "nothing was running"))
    return 0
