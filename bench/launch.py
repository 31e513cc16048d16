"""Launch figures, side by side with DeepMind's launchpad (local_mp).

Both sides run the same unchanged anchor script,
../shared/anchors/lp_program_bench.py (1 consumer + N echo CourierNodes,
launch_type local_mp, terminal 'output_to_files'): ours with this project's
interpreter, the peer's with dm-launchpad 0.5.2 on Python 3.10. `--runs`
interleaved runs, medians reported; per run and per side:

  ready     seconds until the consumer has called every producer once: the
            script's own figure, counted from its T0 (taken after
            `import launchpad`, so interpreter start and the import are not in
            it; they are shown apart as `import`)
  whole     wall time of the whole subprocess: start, calls, lp.stop() and
            the end of every process
  peak RSS  the largest single process's peak RSS, from `/usr/bin/time -f %M`:
            the kernel's ru_maxrss of the waited child, which is the max over
            it and every descendant reaped inside the tree (node processes of
            both launchers are reaped by their parents: ours via the fork
            server, the peer's via Popen). Without /usr/bin/time, or with
            --rss-poll, the process tree is polled with psutil every 50 ms (each
            process's VmHWM).
  rtt, futures, 16 MiB echo: what the script's consumer measures after ready.
  idle node a program with one idle CourierNode (Echo) launched local_mp from a
            small helper; once it has answered a call, the node process (found
            among the helper's descendants) is read from /proc: VmHWM (peak
            RSS), VmRSS, and from smaps_rollup its PSS and USS (private pages;
            what one more node really costs when pages are shared with a fork
            server).

Then once: ours with 1 consumer + 256 producers (exit status, ready, whole
run), and the peer with 256 under a 300 s timeout (killed if it overruns, or
if the machine's available memory runs low).

Usage: python bench/launch.py [--runs 3] [--anchors DIR] [--peer-python PATH]
                              [--big 256] [--big-timeout 300] [--rss-poll]
The reference environment is built by anchors/setup_anchor_venvs.sh; without
it the peer's figures are skipped.
"""

from __future__ import annotations

import os
import pathlib
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import peers

try:
  import psutil
except ImportError:  # the /proc fallbacks below do without it
  psutil = None

TIME = shutil.which("time", path="/usr/bin")
MIN_AVAILABLE_MB = 1500  # a run is stopped if the machine gets this close to running out

# Run with each side's interpreter: launches one idle echo node, calls it once,
# prints its pid, then waits for the program (the benchmark stops it with SIGTERM
# to this launcher, which both launchers handle).
IDLE_HELPER = """\
import os
import sys
import time

from absl import app
import launchpad as lp


class Echo:
  def ping(self, x):
    return x

  def pid(self):
    return os.getpid()


def main(_):
  program = lp.Program('idle')
  handle = program.add_node(lp.CourierNode(Echo), label='echo')
  t0 = time.perf_counter()
  launched = lp.launch(program, launch_type='local_mp', terminal='output_to_files',
                       serialize_py_nodes=False)
  client = handle.dereference()
  deadline = time.time() + 120
  while True:
    try:
      pid = client.pid()
      break
    except Exception:
      if time.time() > deadline:
        raise
      time.sleep(0.02)
  print(f'IDLE_NODE {pid} {time.perf_counter() - t0:.3f}', flush=True)
  try:
    launched.wait()
  except BaseException as e:
    print('wait:', repr(e), file=sys.stderr)


if __name__ == '__main__':
  app.run(main)
"""


class Bench:
  """One side's environment: its interpreter, and where its runs write."""

  def __init__(self, name: str, python: str, script: pathlib.Path, work: pathlib.Path, poll: bool):
    self.name = name
    self.python = python
    self.script = script
    self.work = work / name
    self.work.mkdir(parents=True)
    self.poll = poll or TIME is None
    (self.work / "idle_node.py").write_text(IDLE_HELPER)

  def env(self, tag: str, anchor_out: pathlib.Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ANCHOR_OUT", None)
    env["LAUNCHPAD_HOME"] = str(self.work / "home")  # ours: run directories
    env["LAUNCHPAD_LOGGING_DIR"] = str(self.work / "peer-logs") + "/"  # the peer's node logs
    env["LAUNCH_BENCH_TAG"] = tag  # finds leftover processes afterwards
    if anchor_out is not None:
      env["ANCHOR_OUT"] = str(anchor_out)
    return env

  def anchor(self, n: int, timeout: float) -> dict[str, float]:
    """One run of the anchor script with `n` producers."""
    tag = uuid.uuid4().hex
    out = self.work / f"anchor-{tag}.txt"
    time_out = self.work / f"time-{tag}.txt"
    log = self.work / f"n{n}-{tag}.log"
    command = [self.python, str(self.script), f"--n={n}"]
    if not self.poll:
      command = [TIME, "-f", "%e %M", "-o", str(time_out), *command]
    with open(log, "w") as log_file:
      start = time.perf_counter()
      process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=self.env(tag, out),
        start_new_session=True,
        cwd=self.work,  # not the repository: `import launchpad` must find each side's own
      )
      peak, problem = self._wait(process, start, timeout, self.poll)
      whole = time.perf_counter() - start
    figures = {"whole_s": whole, "returncode": float(process.returncode)}
    left = leftovers(tag)
    if left:
      problem = (problem + "; " if problem else "") + f"{len(left)} processes left after the run"
      kill_all(left)
    if not self.poll and time_out.exists():
      fields = time_out.read_text().split()
      if len(fields) >= 2 and fields[-1].isdigit():
        peak = int(fields[-1]) / 1024
    if peak:
      figures["peak_rss_mb"] = peak
    if out.exists():
      m = re.search(r"ready_n\d+=(\S+) rtt_us=(\S+) futures=(\S+) echo16=(\S+)", out.read_text())
      if m:
        ready, rtt, futures, echo = map(float, m.groups())
        figures.update(ready_s=ready, rtt_us=rtt, futures_calls_s=futures, echo16_GBs=echo)
    if "ready_s" not in figures and not problem:
      problem = "the consumer reported nothing"
    if process.returncode != 0 and not problem:
      problem = f"exit status {process.returncode}"
    if problem:
      figures["problem"] = problem  # type: ignore[assignment]
      tail = log.read_text(errors="replace").splitlines()[-8:]
      print(f"  {self.name} n={n}: {problem}; log {log}:", *tail, sep="\n    ", flush=True)
    return figures

  def _wait(
    self, process: subprocess.Popen, start: float, timeout: float, poll: bool
  ) -> tuple[float, str]:
    """Waits for `process`; kills its tree after `timeout` s or when memory runs low.

    Returns the peak RSS (MB) of any single process in the tree if `poll`,
    and what went wrong, if anything.
    """
    peak, next_memory_check = 0.0, 0.0
    while True:
      try:
        process.wait(0.05 if poll else 0.5)
        return peak, ""
      except subprocess.TimeoutExpired:
        pass
      if poll:
        pids = [process.pid, *tree(process.pid)]
        peak = max(peak, *(hwm_mb(pid) for pid in pids))
      now = time.perf_counter()
      overdue = now > start + timeout
      short = False
      if now >= next_memory_check:
        next_memory_check = now + 0.5
        short = available_mb() < MIN_AVAILABLE_MB
      if overdue or short:
        kill_all([*tree(process.pid), process.pid])
        process.wait()
        if overdue:
          return peak, f"did not finish within {timeout:.0f} s; killed"
        return peak, f"killed: the machine had under {MIN_AVAILABLE_MB} MB available"

  def import_time(self) -> float:
    """Seconds for the interpreter to start and import what the script imports."""
    start = time.perf_counter()
    subprocess.run(
      [self.python, "-c", "from absl import app, flags; import launchpad"],
      check=True,
      cwd=self.work,
      stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start

  def idle_node(self) -> dict[str, float]:
    """Memory of one idle CourierNode process, once it has answered a call."""
    tag = uuid.uuid4().hex
    log = self.work / f"idle-{tag}.log"
    with open(log, "w") as log_file:
      process = subprocess.Popen(
        [self.python, str(self.work / "idle_node.py")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
        env=self.env(tag),
        start_new_session=True,
        cwd=self.work,  # not the repository: `import launchpad` must find each side's own
      )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
    figures: dict[str, float] = {}
    try:
      deadline = time.monotonic() + 120
      while "pid" not in figures:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        if line.startswith("IDLE_NODE "):
          _, pid, first = line.split()
          figures.update(pid=int(pid), first_reply_s=float(first))
      pid = int(figures["pid"])
      if pid not in tree(process.pid):
        raise RuntimeError(f"node pid {pid} is not a descendant of the launcher {process.pid}")
      time.sleep(0.5)  # let it settle; it stays idle
      status = proc_fields(f"/proc/{pid}/status")
      rollup = proc_fields(f"/proc/{pid}/smaps_rollup")
      figures.update(
        vmhwm_mb=status["VmHWM"] / 1024,
        vmrss_mb=status["VmRSS"] / 1024,
      )
      if rollup:
        figures.update(
          pss_mb=rollup["Pss"] / 1024,
          uss_mb=(rollup["Private_Clean"] + rollup["Private_Dirty"]) / 1024,
        )
    except (queue.Empty, RuntimeError, KeyError, OSError, ValueError) as e:
      print(f"  {self.name} idle node: {e!r}; log {log}", flush=True)
    finally:
      process.send_signal(signal.SIGTERM)
      try:
        process.wait(30)
      except subprocess.TimeoutExpired:
        kill_all([*tree(process.pid), process.pid])
        process.wait()
      left = leftovers(tag)
      if left:
        print(f"  {self.name} idle node: {len(left)} processes left; killed", flush=True)
        kill_all(left)
    figures.pop("pid", None)
    return figures


def _pump(stream, lines: queue.Queue) -> None:
  for line in stream:
    lines.put(line)


def proc_fields(path: str) -> dict[str, int]:
  """'Name:  123 kB' lines of a /proc file, in kB."""
  fields = {}
  try:
    with open(path) as f:
      for line in f:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
          fields[name] = int(parts[0])
  except OSError:
    pass
  return fields


def hwm_mb(pid: int) -> float:
  """The peak RSS of this process so far (VmHWM), so spikes between polls count."""
  return proc_fields(f"/proc/{pid}/status").get("VmHWM", 0) / 1024


def available_mb() -> float:
  return proc_fields("/proc/meminfo").get("MemAvailable", 1 << 40) / 1024


def tree(pid: int) -> list[int]:
  """Pids of the descendants of `pid`."""
  if psutil is not None:
    try:
      return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
      return []
  children: dict[int, list[int]] = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          ppid = int(f.read().rpartition(")")[2].split()[1])
      except (OSError, ValueError, IndexError):
        continue
      children.setdefault(ppid, []).append(int(entry))
  found, todo = [], [pid]
  while todo:
    for child in children.get(todo.pop(), []):
      found.append(child)
      todo.append(child)
  return found


def leftovers(tag: str) -> list[int]:
  """Processes still alive that were started with LAUNCH_BENCH_TAG=tag (so by this benchmark)."""
  marker = f"LAUNCH_BENCH_TAG={tag}".encode()
  pids = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/environ", "rb") as f:
          if marker in f.read().split(b"\0"):
            with open(f"/proc/{entry}/stat") as stat:
              if stat.read().rpartition(")")[2].split()[0] != "Z":
                pids.append(int(entry))
      except OSError:
        continue
  return pids


def kill_all(pids: list[int]) -> None:
  """SIGKILL to each of these pids (all started by this benchmark)."""
  for pid in pids:
    try:
      os.kill(pid, signal.SIGKILL)
    except OSError:
      pass


def fmt(figures: dict[str, float]) -> str:
  return " ".join(
    f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in figures.items()
  )


def main() -> None:
  parser = peers.parser(__doc__)
  parser.add_argument(
    "--big", type=int, default=256, help="producers in the single big run (0: skip)"
  )
  parser.add_argument("--big-timeout", type=float, default=300.0)
  parser.add_argument("--rss-poll", action="store_true", help="poll RSS with psutil, not time(1)")
  args = parser.parse_args()

  script = args.anchors / "lp_program_bench.py"
  if not script.exists():
    sys.exit(f"no anchor script {script}")
  have_peer = pathlib.Path(args.peer_python).exists()
  if not have_peer:
    print(f"peer skipped: no {args.peer_python}", flush=True)
  sizes = (32, 8)
  print(
    "peak RSS from "
    + ("/usr/bin/time -f %M" if TIME and not args.rss_poll else "psutil polling every 50 ms"),
    flush=True,
  )

  with tempfile.TemporaryDirectory(prefix="launch-bench-") as tmp:
    work = pathlib.Path(tmp)
    sides = [Bench("ours", sys.executable, script, work, args.rss_poll)]
    if have_peer:
      sides.append(Bench("peer", args.peer_python, script, work, args.rss_poll))
    results: dict[tuple[str, str], list[dict[str, float]]] = {}

    def record(side: Bench, what: str, figures: dict[str, float]) -> None:
      results.setdefault((side.name, what), []).append(figures)
      print(f"  {side.name:4s} {what:6s} {fmt(figures)}", flush=True)

    for run in range(args.runs):
      # Interleaved, and alternating who goes first, so a noisy minute hurts both alike.
      order = sides if run % 2 == 0 else sides[::-1]
      for n in sizes:
        for side in order:
          record(side, f"n{n}", side.anchor(n, timeout=180))
      for side in order:
        record(side, "idle", side.idle_node())
        record(side, "import", {"import_s": side.import_time()})
      print(f"run {run + 1}/{args.runs} done", flush=True)

    big: dict[str, dict[str, float]] = {}
    if args.big:
      for side in sides:
        print(f"{side.name}: 1 consumer + {args.big} producers, once", flush=True)
        big[side.name] = side.anchor(args.big, timeout=args.big_timeout)
        print(f"  {side.name:4s} n{args.big} {fmt(big[side.name])}", flush=True)

  medians = {key: peers.median_of(runs) for key, runs in results.items()}
  print(f"\nmedians of {args.runs} runs")
  rows = [
    ("n32", "ready_s", "ready, 1+32 (s)"),
    ("n32", "whole_s", "whole run, 1+32 (s)"),
    ("n32", "peak_rss_mb", "largest process peak RSS, 1+32 (MB)"),
    ("n8", "ready_s", "ready, 1+8 (s)"),
    ("n8", "whole_s", "whole run, 1+8 (s)"),
    ("n8", "peak_rss_mb", "largest process peak RSS, 1+8 (MB)"),
    ("n32", "rtt_us", "consumer->producer sync call (us)"),
    ("n32", "futures_calls_s", "futures pipelined (calls/s)"),
    ("n32", "echo16_GBs", "16 MiB bytes echo (GB/s)"),
    ("idle", "vmhwm_mb", "idle node VmHWM (MB)"),
    ("idle", "vmrss_mb", "idle node VmRSS (MB)"),
    ("idle", "pss_mb", "idle node PSS (MB)"),
    ("idle", "uss_mb", "idle node USS (MB)"),
    ("idle", "first_reply_s", "one-node program: launch to first reply (s)"),
    ("import", "import_s", "interpreter + import launchpad (s)"),
  ]
  names = [side.name for side in sides]
  print(f"{'figure':46s}" + "".join(f"{name:>12s}" for name in names) + f"{'ours/peer':>12s}")
  for what, key, label in rows:
    values = [medians.get((name, what), {}).get(key) for name in names]
    line = f"{label:46s}" + "".join(
      f"{v:12.3f}" if v is not None else f"{'-':>12s}" for v in values
    )
    if len(values) == 2 and values[0] is not None and values[1]:
      line += f"{values[0] / values[1]:12.3f}"
    print(line)

  if have_peer:
    print("\nratios ours/peer (target in brackets)")
    for what, key, label, target in (
      ("n32", "ready_s", "ready, 1+32", 0.25),
      ("n32", "whole_s", "whole run, 1+32", 0.25),
      ("idle", "vmhwm_mb", "idle node peak memory (VmHWM)", 0.3),
    ):
      ours = medians.get(("ours", what), {}).get(key)
      peer = medians.get(("peer", what), {}).get(key)
      if ours is not None and peer:
        ratio = ours / peer
        met = "met" if ratio <= target else "NOT met"
        print(f"  {label:40s} {ratio:8.3f}  [<= {target}]  {met}")
      else:
        print(f"  {label:40s} {'-':>8s}  [<= {target}]  no figure")

  for name, figures in big.items():
    status = "ok" if not figures.get("problem") and figures.get("returncode") == 0.0 else "FAILED"
    print(f"\n{name} 1 consumer + {args.big} producers: {status}: {fmt(figures)}")


if __name__ == "__main__":
  main()
