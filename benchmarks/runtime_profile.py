"""Where the packed runtime's time goes: every kernel call of a forward timed, summed per kernel.

    python benchmarks/runtime_profile.py student.bibert             # a trained file
    python benchmarks/runtime_profile.py --shape bert-base          # random weights, BiBERT's recipe
    python benchmarks/runtime_profile.py --shape bert-base --isa avx2 --threads 1,2
    python benchmarks/runtime_profile.py --shape bert-base --isa avx2 --compare_tables
    python benchmarks/runtime_profile.py student.bibert --compare_one_call --seq_len 1,128
    python benchmarks/runtime_profile.py student.bibert --by_length --seq_len 1-32

Batch ``--batch`` of ``--seq_len`` random token ids; after ``--warmup`` forwards, ``--repeats``
forwards are timed and each kernel's share is its summed wall time per forward. The model runs
one kernel call at a time (``one_call`` off; a forward is otherwise one call of the kernels,
the same logits), so what no kernel accounts for (Python between the calls, numpy glue) is the
last row: what the one-call forward saves, roughly. Thread counts run one after
the other in this process (the kernels' pool is resized between them). ``--compare_tables``
profiles each thread count twice, the binary products and the attention by table lookup (AVX2's
default) and by XOR and popcount (the AVX-512 set's way, with AVX2's popcount), in alternating
rounds, and prints the ratio of the two forwards.
``--compare_one_call`` times the forward as one call of the kernels (how a model runs) and
kernel by kernel, in alternating rounds, at each ``--seq_len`` (comma-separated) and thread count.
``--by_length`` times only the forward as a model runs it, at each ``--seq_len`` (comma-separated,
``a-b`` for every length from a to b), the lengths in turn in each of ``--rounds`` rounds, and
prints the median per length: how latency follows the input's length.
"""

import argparse
import collections
import datetime
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def timed_kernels(model):
    """Wrap the model's kernel methods so each call adds its wall time to the returned counters."""
    seconds, calls = collections.Counter(), collections.Counter()
    kern = model.kernels
    for name in [n for n in dir(type(kern)) if not n.startswith("_")]:
        method = getattr(kern, name)
        if not callable(method):
            continue

        def wrapper(*args, _method=method, _name=name, **kw):
            t0 = time.perf_counter()
            try:
                return _method(*args, **kw)
            finally:
                seconds[_name] += time.perf_counter() - t0
                calls[_name] += 1

        setattr(kern, name, wrapper)
    return seconds, calls


def profile(path, batch, seq_len, isa, threads, warmup, repeats, tables=True):
    """{kernel: (ms per forward, calls per forward)} and the forward's ms, at one thread count."""
    import numpy as np

    from paddle_bibert.runtime import load_packed

    model = load_packed(path, isa=isa, num_threads=threads)
    model.one_call = False  # one kernel call at a time, each timed (the same logits)
    if seq_len > model.pos.shape[0]:
        sys.exit(f"error: --seq_len {seq_len} exceeds the file's {model.pos.shape[0]} positions; "
                 f"pass --seq_len {model.pos.shape[0]} or less")
    model.kernels.tables = tables
    seconds, calls = timed_kernels(model)
    ids = np.random.default_rng(0).integers(1, int(model.config["vocab_size"]), (batch, seq_len))
    for _ in range(warmup):
        model(ids)
    seconds.clear(), calls.clear()
    t0 = time.perf_counter()
    for _ in range(repeats):
        model(ids)
    total = (time.perf_counter() - t0) / repeats * 1e3
    rows = {k: (v / repeats * 1e3, calls[k] / repeats) for k, v in seconds.most_common()}
    return rows, total, model.backend


def table(rows, total, backend, threads):
    out = [f"**{backend}, {threads} thread(s)**: {total:.2f} ms a forward", "",
           "| kernel | ms a forward | share | calls a forward |", "|---|---|---|---|"]
    for k, (ms, n) in rows.items():
        out.append(f"| {k} | {ms:.2f} | {ms / total:.0%} | {n:g} |")
    rest = total - sum(ms for ms, _ in rows.values())
    out.append(f"| (between the kernels) | {rest:.2f} | {rest / total:.0%} | |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", nargs="?", help="a .bibert file (else --shape)")
    ap.add_argument("--shape", help="profile a random model of this shape (packed.py's SHAPES)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq_len", default="128",
                    help="tokens a sequence (comma-separated lengths, a-b for a range, with "
                         "--compare_one_call or --by_length)")
    ap.add_argument("--isa", help="force a kernel set (avx512, avx2, popcnt, generic)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--compare_tables", action="store_true",
                    help="also time the products and attention without table lookup (AVX2), in "
                    "alternating rounds")
    ap.add_argument("--compare_one_call", action="store_true",
                    help="time the forward as one call and kernel by kernel, in alternating rounds")
    ap.add_argument("--by_length", action="store_true",
                    help="time the forward (one call) at each --seq_len, in rounds over the lengths")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of a comparison or --by_length")
    args = ap.parse_args(argv)
    if bool(args.path) == bool(args.shape):
        ap.error("give a .bibert file or --shape, not both and not neither")
    try:
        threads = [int(t) for t in args.threads.split(",")]
        lengths = parse_lengths(args.seq_len)
    except ValueError:
        ap.error(f"--threads and --seq_len take comma-separated integers (--seq_len also a-b), "
                 f"got {args.threads!r} and {args.seq_len!r}")
    if min(threads + lengths) < 1 or min(args.batch, args.repeats) < 1 or args.warmup < 0:
        ap.error("--threads, --batch, --seq_len and --repeats must be >= 1, --warmup >= 0")
    if len(lengths) > 1 and not (args.compare_one_call or args.by_length):
        ap.error("several --seq_len lengths are for --compare_one_call or --by_length; pass one")
    if args.compare_tables + args.compare_one_call + args.by_length > 1:
        ap.error("pass one of --compare_tables, --compare_one_call and --by_length")
    if args.compare_one_call:
        from paddle_bibert.runtime import compiled_available

        if not compiled_available():
            ap.error("--compare_one_call: the compiled kernels are not built (the numpy backend "
                     "runs kernel by kernel only); run `pip install -e .` with a C compiler")
    if (args.compare_one_call or args.by_length) and args.warmup < 1:
        ap.error("--compare_one_call and --by_length: pass --warmup 1 or more (the first forward "
                 "makes the plan)")
    args.seq_len = lengths[0]
    if args.compare_tables:
        from paddle_bibert.runtime import available_isas
        from paddle_bibert.runtime.kernels import NIBBLE_ISAS

        isa = args.isa or (available_isas() or ["numpy"])[0]
        if isa not in NIBBLE_ISAS:
            ap.error(f"--compare_tables: the {isa} kernels have no table lookup; pass --isa "
                     f"{NIBBLE_ISAS[0]} (on a CPU that has it)")
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if args.path and not os.path.isfile(args.path):
        ap.error(f"{args.path}: no such file; pass a .bibert file written by paddle_bibert.export")
    print(header(argv) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.path or random_file(args.shape, os.path.join(tmp, "model.bibert"))
        for t in threads:
            if args.by_length:
                print(by_length(path, args, t, lengths) + "\n")
                continue
            if args.compare_one_call:
                for n in lengths:
                    compare_one_call(path, args, t, n)
                continue
            if args.compare_tables:
                compare_tables(path, args, t)
                continue
            rows, total, backend = profile(path, args.batch, args.seq_len, args.isa, t, args.warmup,
                                           args.repeats)
            print(table(rows, total, backend, t) + "\n")


def parse_lengths(text):
    """``"1,8,16-18"`` -> ``[1, 8, 16, 17, 18]`` (ValueError on anything else)."""
    out = []
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        out += range(int(lo), int(hi) + 1) if sep else [int(lo)]
    if not out:
        raise ValueError(text)
    return out


def by_length(path, args, threads, lengths):
    """The forward as a model runs it (one call) at each length, ``--rounds`` rounds over all
    lengths in turn (a host's drift spreads over them alike); a table of the medians."""
    import statistics

    from paddle_bibert.runtime import load_packed

    backend = load_packed(path, isa=args.isa, num_threads=threads).backend
    times = {n: [] for n in lengths}
    for _ in range(args.rounds):
        for n in lengths:
            times[n].append(forward_ms(path, args.batch, n, args.isa, threads, args.warmup,
                                       args.repeats, one_call=True))
    rows = [f"| {n} | {statistics.median(t):.3f} | {', '.join(f'{x:.3f}' for x in t)} |"
            for n, t in times.items()]
    return (f"**{backend}, {threads} thread(s)**, batch {args.batch}: ms a forward by length, "
            f"median of {args.rounds} round(s)\n\n| tokens | ms a forward | by round |\n"
            "|---|---|---|\n" + "\n".join(rows))


def compare_tables(path, args, threads):
    """The forward with and without table lookup, ``--rounds`` times each, alternating: the
    last round's per-kernel tables, then every round's forward times and the median ratio."""
    import statistics

    totals, last = {True: [], False: []}, {}
    for _ in range(args.rounds):
        for tables in (True, False):
            last[tables] = profile(path, args.batch, args.seq_len, args.isa, threads, args.warmup,
                                   args.repeats, tables)
            totals[tables].append(last[tables][1])
    for tables, name in ((True, "table lookup"), (False, "XOR and popcount")):
        print(f"{name}, last round: " + table(*last[tables], threads) + "\n")
    on, off = (statistics.median(totals[k]) for k in (True, False))
    print(f"{threads} thread(s), ms a forward by round: table lookup "
          f"{', '.join(f'{x:.2f}' for x in totals[True])}; XOR and popcount "
          f"{', '.join(f'{x:.2f}' for x in totals[False])}. Medians {on:.2f} and {off:.2f}: "
          f"table lookup {off / on:.2f}x as fast.\n")


def forward_ms(path, batch, seq_len, isa, threads, warmup, repeats, one_call):
    """ms a forward of the model as it runs (no kernel timed), as one call or kernel by kernel."""
    import numpy as np

    from paddle_bibert.runtime import load_packed

    model = load_packed(path, isa=isa, num_threads=threads)
    if seq_len > model.pos.shape[0]:
        sys.exit(f"error: --seq_len {seq_len} exceeds the file's {model.pos.shape[0]} positions; "
                 f"pass --seq_len {model.pos.shape[0]} or less")
    model.one_call = one_call
    ids = np.random.default_rng(0).integers(1, int(model.config["vocab_size"]), (batch, seq_len))
    for _ in range(warmup):
        model(ids)
    t0 = time.perf_counter()
    for _ in range(repeats):
        model(ids)
    return (time.perf_counter() - t0) / repeats * 1e3


def compare_one_call(path, args, threads, seq_len):
    """The forward as one call and kernel by kernel, ``--rounds`` times each, alternating."""
    import statistics

    totals = {True: [], False: []}
    for _ in range(args.rounds):
        for one_call in (True, False):
            totals[one_call].append(forward_ms(path, args.batch, seq_len, args.isa, threads,
                                               args.warmup, args.repeats, one_call))
    one, each = (statistics.median(totals[k]) for k in (True, False))
    print(f"batch {args.batch} x {seq_len} tokens, {threads} thread(s), ms a forward by round: "
          f"one call {', '.join(f'{x:.3f}' for x in totals[True])}; kernel by kernel "
          f"{', '.join(f'{x:.3f}' for x in totals[False])}. Medians {one:.3f} and {each:.3f}: "
          f"one call {each - one:.3f} ms ({(each - one) / each:.0%}) faster.\n")


def header(argv):
    """Date, machine, commit and the command line, as the other benchmarks print them."""
    from deploy import cpu_name

    commit = subprocess.run(["git", "-C", os.path.dirname(HERE), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    args = sys.argv[1:] if argv is None else argv
    return (f"Date {datetime.date.today()}, machine {cpu_name()} ({os.cpu_count()} CPUs), commit "
            f"{commit or 'unknown'}.\nCommand: `python benchmarks/runtime_profile.py {' '.join(args)}`")


def random_file(shape, path):
    """A random model of ``shape`` binarized with BiBERT's recipe, packed to ``path``."""
    from packed import SHAPES, random_model

    from paddle_bibert import BinarizeConfig, binarize_model, export_packed

    if shape not in SHAPES:
        sys.exit(f"error: unknown --shape {shape!r}; known: {', '.join(SHAPES)}")
    model = random_model(shape)
    binarize_model(model, BinarizeConfig.from_recipe("bibert"))
    export_packed(model, path)
    return path


if __name__ == "__main__":
    main()
