"""How much CPU time the host takes from this machine's cores: one busy loop per core, pinned,
records every gap between two clock readings longer than ``--min_gap_ms`` (time the loop did not
run), first with one core busy, then with every core busy at once.

On a shared virtual machine this tells timing noise from the code's: the packed runtime's
forward at two threads keeps both vCPUs busy, and if the host takes time from a vCPU when both
are busy (a CPU quota, another tenant), a short forward that lands in a gap is slowed by all of
it, while a long one (ONNX Runtime's FP32 BERT-base) averages over several.

    python benchmarks/host_stalls.py                 # 10 s per pass
    python benchmarks/host_stalls.py --seconds 30 --min_gap_ms 0.5
"""
import argparse
import datetime
import multiprocessing as mp
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def busy(cpu, seconds, min_gap, out):
    """Spin on ``cpu`` for ``seconds``; put (cpu, gaps in seconds) on ``out``."""
    os.sched_setaffinity(0, {cpu})
    clock = time.perf_counter
    gaps, t_end = [], clock() + seconds
    last = clock()
    while last < t_end:
        t = clock()
        if t - last > min_gap:
            gaps.append(t - last)
        last = t
    out.put((cpu, gaps))


def run_pass(cpus, seconds, min_gap):
    out = mp.Queue()
    procs = [mp.Process(target=busy, args=(c, seconds, min_gap, out)) for c in cpus]
    for p in procs:
        p.start()
    res = dict(out.get() for _ in procs)
    for p in procs:
        p.join()
    return res


def row(label, cpu, gaps, seconds):
    lost = sum(gaps)
    over = lambda ms: sum(g > ms / 1e3 for g in gaps)  # noqa: E731
    return (f"| {label} | {cpu} | {len(gaps)} | {over(1)} | {over(10)} | "
            f"{max(gaps, default=0) * 1e3:.1f} | {lost * 1e3:.0f} ({100 * lost / seconds:.1f}%) |")


def header(argv, ncpu, args):
    """Date, machine, commit, the load before the passes and the command line."""
    sys.path.insert(0, HERE)
    from deploy import cpu_name

    commit = subprocess.run(["git", "-C", os.path.dirname(HERE), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    cmd = " ".join(["python benchmarks/host_stalls.py", *(sys.argv[1:] if argv is None else argv)])
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    return (f"Date {datetime.date.today()}, machine {cpu_name()} ({ncpu} CPUs usable), commit "
            f"{commit or 'unknown'}; {args.seconds:g} s a pass, gaps over {args.min_gap_ms:g} ms; "
            f"load average at start {load}.\nCommand: `{cmd}`")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each pass")
    ap.add_argument("--min_gap_ms", type=float, default=0.1, help="shortest gap counted")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.min_gap_ms <= 0:
        sys.exit("error: --seconds and --min_gap_ms must be > 0, e.g. --seconds 10 "
                 "--min_gap_ms 0.1")
    cpus = sorted(os.sched_getaffinity(0))
    print(header(argv, len(cpus), args) + "\n")
    print("| cores busy | core | gaps | over 1 ms | over 10 ms | longest ms | time lost ms |")
    print("|---|---|---|---|---|---|---|")
    min_gap = args.min_gap_ms / 1e3
    for cpu in cpus:  # one core at a time
        gaps = run_pass([cpu], args.seconds, min_gap)[cpu]
        print(row("one", cpu, gaps, args.seconds), flush=True)
    if len(cpus) > 1:
        for cpu, gaps in sorted(run_pass(cpus, args.seconds, min_gap).items()):
            print(row("all", cpu, gaps, args.seconds), flush=True)


if __name__ == "__main__":
    main()
