"""benchmarks/host_stalls.py: a core's busy loop reports the time it did not run."""

import importlib.util
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "benchmarks", "host_stalls.py")


def _tool():
    spec = importlib.util.spec_from_file_location("host_stalls", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_stopped_loop_reports_the_stop_as_a_gap():
    """Stopping the loop's process for 0.3 s (as a host would take its vCPU) shows as one gap of
    at least that long, and the row counts it among the gaps over 10 ms."""
    tool = _tool()
    out = mp.Queue()
    cpu = min(os.sched_getaffinity(0))
    p = mp.Process(target=tool.busy, args=(cpu, 1.5, 1e-3, out))
    p.start()
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGSTOP)
    time.sleep(0.3)
    os.kill(p.pid, signal.SIGCONT)
    got_cpu, gaps = out.get(timeout=30)
    p.join()
    assert got_cpu == cpu
    assert max(gaps) >= 0.29, gaps
    cells = tool.row("one", cpu, gaps, 1.5).strip("|").split("|")
    assert int(cells[4]) >= 1 and float(cells[5]) >= 290


def test_bad_arguments_get_a_one_line_error():
    res = subprocess.run([sys.executable, TOOL, "--seconds", "0"], capture_output=True, text=True)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == [
        "error: --seconds and --min_gap_ms must be > 0, e.g. --seconds 10 --min_gap_ms 0.1"]


def test_round_trip_is_answered_by_the_other_core():
    """Each of the round trips waits for the pinned peer's answer: a peer that does not answer
    leaves the loop waiting (the subprocess times out), one that answers ends it with a time."""
    cpus = sorted(os.sched_getaffinity(0))
    pair = cpus[:2] if len(cpus) > 1 else cpus * 2  # on one CPU the two take turns
    code = (f"import importlib.util as u; s = u.spec_from_file_location('h', {TOOL!r}); "
            f"m = u.module_from_spec(s); s.loader.exec_module(m); "
            f"print(m.round_trip({pair!r}, 200))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    ns = float(res.stdout.strip())
    assert 0 < ns < 1e9


def test_round_trip_arguments_get_a_one_line_error():
    res = subprocess.run([sys.executable, TOOL, "--samples", "0"], capture_output=True, text=True)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == [
        "error: --round_trips must be >= 0 and --samples >= 1, e.g. --round_trips 100000 "
        "--samples 10"]
