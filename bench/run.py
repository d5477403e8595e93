"""Benchmark tlstunnel against stunnel4, side by side: ``python3 bench/run.py [--quick]``.

Both programs run the same generated configurations (ECDSA P-256, TLS 1.3), one after the
other, alternating which goes first from round to round, and the table shows each
program's median over the rounds and the candidate/stunnel4 ratio.  The raw numbers of
every round go to ``bench/results/*.json``.  See bench/README.md for what each figure
measures.  ``--candidate stunnel4`` measures stunnel4 against itself: every ratio should
then be near 1.0, which shows how much noise the machine adds.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procstat, report
from bench.certs import make_credentials
from bench.tunnels import BenchError, Program
from bench.workloads import WORKLOADS, Settings, Step

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_CANDIDATE = (sys.executable, "-m", "tlstunnel")
STEP_ERRORS = (BenchError, OSError, subprocess.SubprocessError, ValueError)
BACKGROUND_WARN_PCT = 10.0  # other work on the machine above this makes the numbers suspect


class DeadlineExceeded(Exception):
    """The whole run took longer than ``--deadline``."""


def _settings(args: argparse.Namespace, nofile: int) -> Settings:
    quick = args.quick
    connections = args.connections or (1000 if quick else 5000)
    # stunnel allows nofile * 125 / 256 clients; we and the tunnel need 2 fds each.
    allowed = min(nofile * 125 // 256, nofile // 2) - 64
    if connections > allowed:
        print(
            f"warning: RLIMIT_NOFILE is {nofile}: idle connections cut to {allowed}",
            file=sys.stderr,
        )
        connections = allowed
    bulk_mb = args.bulk_mb or (512 if quick else 2048)
    return Settings(
        bulk_bytes=bulk_mb << 20,
        bulk_reverse_bytes=(bulk_mb // 2) << 20,
        handshake_seconds=2.0 if quick else 5.0,
        handshake_clients=args.clients,
        idle_connections=connections,
        hold_processes=2,
        short_seconds=1.5 if quick else 3.0,
        short_clients=args.clients,
        keepalive_seconds=1.0 if quick else 2.0,
        step_timeout_s=args.step_timeout,
    )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark tlstunnel against stunnel4 side by side."
    )
    parser.add_argument("--quick", action="store_true", help="1 round, small sizes (CI smoke)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, --quick 1)")
    parser.add_argument(
        "--candidate",
        default=shlex.join(DEFAULT_CANDIDATE),
        help="command that runs a config file (default: %(default)s)",
    )
    parser.add_argument("--baseline", default="stunnel4", help="default: %(default)s")
    parser.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help=f"comma-separated workloads (default: all of {','.join(WORKLOADS)})",
    )
    parser.add_argument("--bulk-mb", type=int, help="bulk MiB (default 2048, --quick 512)")
    parser.add_argument("--connections", type=int, help="idle connections (default 5000)")
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument("--step-timeout", type=float, default=120.0, help="seconds per step")
    parser.add_argument("--deadline", type=float, help="seconds for the whole run")
    parser.add_argument("--json", type=Path, help="where to write the raw results")
    parser.add_argument("--keep", action="store_true", help="keep configs and logs")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a floor fails")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    unknown = set(args.only.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    return args


def _programs(args: argparse.Namespace) -> tuple[Program, Program]:
    command = tuple(shlex.split(args.candidate))
    label = "tlstunnel" if command == DEFAULT_CANDIDATE else "candidate"
    candidate = Program(label, command)
    baseline = Program("stunnel4", tuple(shlex.split(args.baseline)))
    for program in (candidate, baseline):
        if shutil.which(program.command[0]) is None:
            raise SystemExit(f"{program.label}: command not found: {program.command[0]}")
    return candidate, baseline


def _describe(metrics: dict[str, float]) -> str:
    return "  ".join(f"{key}={value:.4g}" for key, value in metrics.items())


@dataclasses.dataclass
class Run:
    """What the rounds produced, and under which conditions."""

    results: report.Results
    finished: bool = False  # False if the deadline stopped the run
    background_pct: list[float] = dataclasses.field(default_factory=list)


def _background_pct(seconds: float = 1.0) -> float:
    """How busy the machine is (% of all CPUs) while none of our processes run."""
    busy_before, total_before = procstat.machine_ticks()
    time.sleep(seconds)
    busy_after, total_after = procstat.machine_ticks()
    return 100 * (busy_after - busy_before) / max(total_after - total_before, 1)


def _run_rounds(
    args: argparse.Namespace,
    programs: tuple[Program, Program],
    settings: Settings,
    workdir: Path,
) -> Run:
    """Every round, each preceded by a look at how busy the machine is without us."""
    run = Run({p.label: {} for p in programs})
    template = Step(workdir, make_credentials(workdir), settings)
    try:
        for number in range(args.rounds):
            run.background_pct.append(_background_pct())
            if run.background_pct[-1] > BACKGROUND_WARN_PCT:
                print(
                    f"warning: the machine is {run.background_pct[-1]:.0f}% busy without us",
                    file=sys.stderr,
                )
            _run_round(args, number, programs, template, run.results)
        run.finished = True
    except DeadlineExceeded:
        print(f"\nstopped: the run exceeded its deadline ({_deadline_s(args)} s)", file=sys.stderr)
    return run


def _run_round(
    args: argparse.Namespace,
    number: int,
    programs: tuple[Program, Program],
    template: Step,
    results: report.Results,
) -> None:
    """One round: every workload, both programs, the order flipped on odd rounds."""
    order = programs if number % 2 == 0 else programs[::-1]
    for workload in args.only.split(","):
        for program in order:
            stepdir = template.workdir / f"round{number + 1}-{workload}-{program.label}"
            stepdir.mkdir()
            step = dataclasses.replace(template, workdir=stepdir)
            began = time.monotonic()
            prefix = f"round {number + 1}/{args.rounds} {workload:12} {program.label:10}"
            print(prefix, end=" ", file=sys.stderr, flush=True)
            outcome: report.RoundResult
            try:
                outcome = WORKLOADS[workload](program, step)
                text = _describe(outcome)
            except STEP_ERRORS as error:
                outcome = f"{type(error).__name__}: {error}"
                text = "FAILED " + outcome + _tunnel_logs(stepdir)
                text = text.replace("\n", "\n    ")
            print(f"{text}  ({time.monotonic() - began:.1f} s)", file=sys.stderr)
            results[program.label].setdefault(workload, []).append(outcome)


def _tunnel_logs(stepdir: Path, lines: int = 6) -> str:
    """The last lines of each tunnel's log in a failed step, to show why it failed."""
    text = ""
    for log in sorted(stepdir.glob("*.log")):
        if log.stem in ("server", "client"):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            text += f"\n{log.stem} log:\n" + "\n".join(tail)
    return text


def _stunnel_version(command: tuple[str, ...]) -> str:
    try:
        done = subprocess.run(
            [*command, "-version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = [line for line in done.stderr.splitlines() if line.startswith("stunnel ")]
    return lines[0] if lines else "unknown"


def _deadline_s(args: argparse.Namespace) -> int:
    per_round_s = 150 if args.quick else 400
    return int(args.deadline or per_round_s * args.rounds + 60)


def _on_signal(number: int, _frame: FrameType | None) -> None:
    if number == signal.SIGALRM:
        raise DeadlineExceeded("the run exceeded --deadline")
    raise SystemExit(128 + number)  # unwinds through every ``finally``: children stop


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    candidate, baseline = _programs(args)
    nofile = procstat.raise_nofile_limit()
    settings = _settings(args, nofile)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGALRM, _on_signal)
    signal.alarm(_deadline_s(args))
    started = datetime.datetime.now(datetime.UTC)
    workdir = Path(tempfile.mkdtemp(prefix="tlstunnel-bench-"))
    try:
        run = _run_rounds(args, (candidate, baseline), settings, workdir)
    finally:
        signal.alarm(0)
        if args.keep:
            print(f"configs and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    results = run.results
    workloads = args.only.split(",")
    verdicts = report.floors(results, candidate.label, baseline.label, workloads)
    version = _stunnel_version(baseline.command)
    print()
    print(f"{candidate.label}: {shlex.join(candidate.command)}")
    print(f"stunnel4: {shlex.join(baseline.command)} ({version})")
    print(
        f"{args.rounds} round(s): medians; ratio = median of each round's"
        f" {candidate.label} / stunnel4; spread% = range of those ratios"
    )
    background = ", ".join(f"{pct:.0f}%" for pct in run.background_pct)
    print(f"machine busy without us before each round: {background}", end="")
    if any(pct > BACKGROUND_WARN_PCT for pct in run.background_pct):
        print(" -- other work was running: read every number with suspicion", end="")
    print()
    print()
    print(report.table(results, candidate.label, baseline.label, workloads))
    print()
    print(report.NOISE_NOTE)
    print()
    print(report.floor_lines(verdicts))

    record: dict[str, object] = {
        "started": started.isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "stunnel": version,
            "nofile": nofile,
        },
        "candidate": {"label": candidate.label, "command": list(candidate.command)},
        "baseline": {"label": baseline.label, "command": list(baseline.command)},
        "rounds": args.rounds,
        "finished": run.finished,
        "background_busy_pct": run.background_pct,
        "settings": dataclasses.asdict(settings),
        "summary": report.summary(results, candidate.label, baseline.label),
        "floors": {m.label: {"ratio": r, "floor": m.floor, "verdict": v} for m, r, v in verdicts},
        "raw": results,
    }
    path = args.json or RESULTS_DIR / f"{started:%Y%m%d-%H%M%S}.json"
    report.write_json(path, record)
    print(f"\nraw results: {path}")
    if not run.finished:
        return 3
    if any(isinstance(r, str) for w in results.values() for rs in w.values() for r in rs):
        return 2
    return 1 if args.strict and any(v == "FAIL" for _, _, v in verdicts) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: every process started has been stopped", file=sys.stderr)
        sys.exit(130)
