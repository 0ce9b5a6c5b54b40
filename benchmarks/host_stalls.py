"""How much CPU time the host takes from this machine's cores: one busy loop per core, pinned,
records every gap between two clock readings longer than ``--min_gap_ms`` (time the loop did not
run), first with one core busy, then with every core busy at once.

On a shared virtual machine this tells timing noise from the code's: the packed runtime's
forward at two threads keeps both vCPUs busy, and if the host takes time from a vCPU when both
are busy (a CPU quota, another tenant), a short forward that lands in a gap is slowed by all of
it, while a long one (ONNX Runtime's FP32 BERT-base) averages over several.

    python benchmarks/host_stalls.py                 # 10 s per pass
    python benchmarks/host_stalls.py --seconds 30 --min_gap_ms 0.5

Then, with two cores or more, the round trip of a byte between the first two (one process
writes it, the other answers, each pinned), in several samples: where the host places the two
vCPUs on one core complex they share a cache and it is short; across complexes every line the
threads hand each other (a kernel's output read by the other thread) costs several times more.
The loop is Python's, so read the samples against each other, not as the hardware's latency.
"""
import argparse
import datetime
import multiprocessing as mp
import os
import subprocess
import sys
import time
from multiprocessing import shared_memory

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


def answer(cpu, name, n):
    """Pinned to ``cpu``: n times, wait for byte 0 of shared memory ``name`` to be 1, set it
    to 2."""
    os.sched_setaffinity(0, {cpu})
    shm = shared_memory.SharedMemory(name=name)
    flag = shm.buf
    for _ in range(n):
        while flag[0] != 1:
            pass
        flag[0] = 2
    del flag
    shm.close()


def round_trip(cpus, n):
    """Mean ns of n round trips of a byte from ``cpus[0]`` to ``cpus[1]`` and back."""
    shm = shared_memory.SharedMemory(create=True, size=64)
    flag = shm.buf
    flag[0] = 0
    peer = mp.Process(target=answer, args=(cpus[1], shm.name, n))
    peer.start()
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[0]})
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            flag[0] = 1
            while flag[0] != 2:
                pass
        ns = (time.perf_counter() - t0) / n * 1e9
    finally:
        os.sched_setaffinity(0, mask)
        peer.join()
        del flag
        shm.close()
        shm.unlink()
    return ns


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
    ap.add_argument("--round_trips", type=int, default=100_000,
                    help="round trips a sample between the first two cores (0: none)")
    ap.add_argument("--samples", type=int, default=10, help="samples of round trips")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.min_gap_ms <= 0:
        sys.exit("error: --seconds and --min_gap_ms must be > 0, e.g. --seconds 10 "
                 "--min_gap_ms 0.1")
    if args.round_trips < 0 or args.samples < 1:
        sys.exit("error: --round_trips must be >= 0 and --samples >= 1, e.g. --round_trips "
                 "100000 --samples 10")
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
    if len(cpus) > 1 and args.round_trips:
        samples = [round_trip(cpus[:2], args.round_trips) for _ in range(args.samples)]
        print(f"\nRound trip of a byte between cores {cpus[0]} and {cpus[1]} (Python loop), "
              f"{args.samples} samples of {args.round_trips}: "
              + ", ".join(f"{ns:.0f}" for ns in samples) + " ns")


if __name__ == "__main__":
    main()
