"""Command line: `python -m bench run --all [--quick]`, `run SCENARIO...`, `ceiling`, `list`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from bench import procs

DEFAULT_PROXIES = "lbproxy,haproxy,nginx,aiohttp"
RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the chosen command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run scenarios against proxies")
    run.add_argument("scenarios", nargs="*", help="scenario names (bench/scenarios/*.toml)")
    run.add_argument("--all", action="store_true", help="every scenario")
    run.add_argument("--proxies", default=DEFAULT_PROXIES, help="comma-separated")
    run.add_argument("--repeats", type=int, default=None, help="default 3, or 1 with --quick")
    run.add_argument("--quick", action="store_true", help="a tenth of the length (smoke test)")
    run.add_argument("--gen-procs", type=int, default=None, help="generator processes")
    run.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    run.add_argument("--no-wrk", action="store_true", help="skip the wrk cross-check")
    run.add_argument("--no-plots", action="store_true")
    ceiling = sub.add_parser("ceiling", help="the generator's own ceiling, no proxy")
    ceiling.add_argument("--quick", action="store_true")
    ceiling.add_argument("--gen-procs", type=int, default=None)
    sub.add_parser("list", help="list scenarios")
    args = parser.parse_args(argv)
    procs.install_signal_handlers()

    from bench.scenarios import load_all

    if args.command == "list":
        for s in load_all():
            print(f"{s.name:<16} {s.description}")
        return 0
    if args.command == "ceiling":
        return _ceiling(args.quick, args.gen_procs)
    if not args.all and not args.scenarios:
        parser.error("name scenarios or pass --all")
    try:
        return _run(args, "python -m bench " + shlex.join(argv))
    except KeyboardInterrupt:
        procs.kill_all()
        print("interrupted: every process the run started is stopped", file=sys.stderr)
        return 130


def _ceiling(quick: bool, gen_procs: int | None) -> int:
    from bench.progress import LiveProgress
    from bench.runner import bench_run
    from bench.scenarios import load_all
    from bench.suite import QUICK_FACTOR

    progress = LiveProgress()
    steady = load_all(["steady"])[0].scaled(QUICK_FACTOR if quick else 1.0)
    with bench_run(quick, gen_procs, progress) as br:
        progress.console.print(f"layout: {br.layout.describe()}")
        s = br.measure_ceiling(steady)
    lat = s["latency_us"]
    progress.console.print(
        f"generator ceiling: {s['throughput_rps']:.0f} req/s (steady workload, "
        f"{steady.connections} connections, no proxy); p50 {lat['p50']} us, p99 {lat['p99']} us; "
        f"generator CPU {s['generator_cpu']:.0%} of its core(s)")
    return 0


def _run(args: argparse.Namespace, command: str) -> int:
    from bench import plots, report
    from bench.progress import LiveProgress
    from bench.suite import run_suite

    progress = LiveProgress()
    repeats = args.repeats or (1 if args.quick else 3)
    results = run_suite(
        None if args.all else args.scenarios,
        [p for p in args.proxies.split(",") if p],
        repeats,
        args.quick,
        gen_procs=args.gen_procs,
        wrk_check=not args.no_wrk,
        progress=progress,
    )
    written = report.write(results, args.out, command)
    if not args.no_plots:
        plots.write_all(results, args.out)
        if args.out.resolve() == RESULTS.resolve() and not args.quick:
            readme = Path(__file__).parent / "README.md"
            if "results" in written:
                report.update_readme(readme, written["results"],
                                     args.out / "latency_percentiles.png")
            if "surge" in written:
                report.update_readme(readme, written["surge"], args.out / "surge.png",
                                     report.SURGE_START, report.SURGE_END,
                                     "surge: goodput and critical success by load factor")
    for md in written.values():
        progress.console.print()
        progress.console.print(md.read_text(), markup=False, highlight=False)
    files = ", ".join(f"{md.stem}.json, {md.name}" for md in written.values())
    progress.console.print(f"results in {args.out}/ ({files}, *.png)")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
