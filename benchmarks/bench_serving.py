"""Benchmark: the OpenAI-compatible HTTP API, one process against Ray Serve with LLM replicas (issue 25).

What: requests per second and p50 / p95 latency of ``seedx-agent serve`` at 1, 4 and 16 concurrent clients, for
two servers on the same model, measured in one run:

- ``single``: ``seedx-agent serve --model M --host 127.0.0.1 --port P --memory DIR`` (uvicorn, one process; the
  engine runs one model call at a time).
- ``ray``: ``seedx-agent serve --ray --llm-replicas 2 ...`` (a local Ray instance; the LLM+ViT and the
  de-tokenizer as separate deployments, ``serving/ray_serve.py``).

Why: Ray Serve is the scale-out path (one LLM replica per GPU). Before relying on it, we want to know what its
extra hops (proxy -> ingress replica -> LLM replica, Ray object serialisation) cost per request, and how it
behaves under concurrent load, against the single process on the same machine and model.

How. Each server is a subprocess on a free loopback port, in its own session (so every process it starts,
Ray's included, can be found and stopped by id). The benchmark waits for ``GET /health`` to answer 200 (a
readiness probe: on Ray, once a replica of every deployment answers), sends warm-up requests, then for each
concurrency C runs C client threads, each with its own ``openai.OpenAI`` client (``max_retries=0``), on
``--requests`` requests (or ``--duration`` seconds), recording each request's latency. requests/s = completed
requests / wall time of the cell; p50 and p95 are ``numpy.percentile`` of the completed requests' latencies.
"cores busy" is CPU seconds per wall second of the cell: of the server's whole process tree (Ray's daemons and
replicas included) and of this process (the clients).
The server is then stopped with SIGTERM; processes left in its session are ended by id, and ``ps`` is checked for
Ray processes that were not there before (``ray stop --force`` only if some remain and none pre-existed).

Workloads (``--workloads``): ``chat`` (default): a greedy chat completion, ``max_tokens`` 16, a distinct prompt per
request, ``seed`` fixed; both servers get the same prompt sequence, and the answers are compared. ``image``:
``images.generate`` with ``num_inference_steps`` ``--image-steps`` (a request field of this API), ``seed`` fixed.

Threads and CPUs. Each model process runs torch with ``--threads`` threads (default 1): the single server gets
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` in its environment (torch reads it at start; the value seen in each model
process's environment is recorded), the Ray server also ``--threads``. Ray reserves ``--replica-cpus`` per LLM and
de-tokenizer replica: 1, or less where the machine has fewer CPUs than replicas (2 LLM + 1 de-tokenizer on 2 CPUs:
0.66), since ``serve --ray`` refuses replicas that do not fit (a reservation is scheduling only, not compute).

Caveat, printed with the tables: on a 2-core machine two replicas cannot add much compute. The single server
decodes on one thread and leaves the second core to the HTTP stack and the clients; two Ray replicas can use
both cores, but Ray's proxy, ingress and controller and the clients share them. The ratio Ray/single therefore
shows Ray's per-request overhead and queueing on this machine, not the scale-out of a node with one GPU per
replica.

Run from the repository root::

    HF_HUB_OFFLINE=1 nice -n 5 .venv/bin/python -m benchmarks.bench_serving --model mini --concurrency 1,4,16 \\
        --servers single,ray --requests 480 --out serving.json   # about 3 minutes on 2 CPU cores
    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.bench_serving --quick --out quick.json   # tiny-random, CI
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("single", "ray")
WORKLOADS = ("chat", "image")
API_KEY = "sk-bench-unused"  # the servers run without a key; the client needs some value
CAVEAT = (
    "Note: on a {cpus}-CPU machine the Ray replicas cannot add compute beyond those cores. The single server "
    "decodes on {threads} torch thread(s) and leaves the rest to HTTP and the clients; the Ray replicas share the "
    "same cores with Ray's proxy, ingress, controller and the clients. Ray/single shows Ray's per-request overhead "
    "and queueing here, not the scale-out of a node with one GPU per replica."
)


# -- machine ------------------------------------------------------------------------------------------------------
def _version(package: str) -> str | None:
    """An installed package's version, without importing it."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model and count, package versions and load: printed and stored with the results (torch is not
    imported here: the client process stays light)."""
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                    break
    except OSError:
        pass
    return {
        "cpu_model": model or platform.processor() or "unknown",
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "ray": _version("ray"),
        "openai": _version("openai"),
        "nice": os.nice(0),
    }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_line(info: dict[str, Any]) -> str:
    """``machine_info`` as one printed line."""
    return (
        f"CPU: {info['cpu_model']} ({info['processor'] or 'no platform.processor()'}), {info['cpu_count']} CPUs; "
        f"python {info['python']}, torch {info['torch']}, ray {info['ray']}, openai {info['openai']}; "
        f"benchmark nice {info['nice']}"
    )


# -- processes ----------------------------------------------------------------------------------------------------
@dataclass
class ProcStat:
    """One process from ``/proc``: session id, CPU seconds (user + system) and its command line."""

    pid: int
    sid: int
    cpu_s: float
    cmdline: str


def processes() -> list[ProcStat]:
    """Every process readable in ``/proc`` (those that exit while being read are skipped)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields_ = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp session ...
        found.append(ProcStat(int(entry), int(fields_[3]), (int(fields_[11]) + int(fields_[12])) / ticks, cmdline))
    return found


def session_processes(sid: int) -> list[ProcStat]:
    """The live processes of session ``sid``."""
    return [p for p in processes() if p.sid == sid and p.pid != os.getpid()]


def session_cpu_seconds(sid: int) -> float:
    """CPU seconds used so far by the live processes of session ``sid`` (a server and everything it started)."""
    return sum(p.cpu_s for p in session_processes(sid))


def is_ray_process(cmdline: str) -> bool:
    """Ray's daemons and workers (raylet, GCS, dashboard, log monitor, ``ray::`` actors)."""
    return cmdline.startswith("ray::") or bool(
        re.search(
            r"/ray/(core/src/ray/(raylet|gcs)|dashboard/|_private/(log_monitor|runtime_env)|autoscaler/)", cmdline
        )
    )


def ray_pids() -> set[int]:
    """Ids of every Ray process on the machine (``is_ray_process``)."""
    return {p.pid for p in processes() if is_ray_process(p.cmdline)}


def omp_threads(pid: int) -> str | None:
    """``OMP_NUM_THREADS`` in the environment of process ``pid`` (None if unset or unreadable)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            for item in handle.read().split(b"\0"):
                if item.startswith(b"OMP_NUM_THREADS="):
                    return item.split(b"=", 1)[1].decode()
    except OSError:
        pass
    return None


def _own_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process: the client threads."""
    times = os.times()
    return times.user + times.system


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log_tail(path: Path, chars: int = 4000) -> str:
    """The last ``chars`` characters of a server log."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


# -- servers ------------------------------------------------------------------------------------------------------
@dataclass
class Server:
    """A running server subprocess (its own session) and what is known about it."""

    name: str
    process: subprocess.Popen
    url: str
    log: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def sid(self) -> int:
        """The server's session id."""
        return self.process.pid  # start_new_session: the server leads its session


def replica_cpus(llm_replicas: int, detok_replicas: int = 1) -> float:
    """CPUs to reserve per replica so that every LLM and de-tokenizer replica fits this machine (at most 1)."""
    return min(1.0, math.floor(100 * (os.cpu_count() or 1) / (llm_replicas + detok_replicas)) / 100)


def server_command(name: str, model: str, port: int, memory: Path, llm_replicas: int, threads: int) -> list[str]:
    """The ``seedx-agent serve`` command line of server ``name`` (``-v`` for Ray: its "serving ..." line)."""
    executable = Path(sys.executable).with_name("seedx-agent")
    base = [str(executable)] if executable.exists() else [sys.executable, "-m", "seedx_agent"]
    serve = ["serve", "--model", model, "--host", "127.0.0.1", "--port", str(port), "--memory", str(memory)]
    if name == "single":
        return [*base, *serve]
    ray = ["--ray", "--llm-replicas", str(llm_replicas), "--replica-cpus", f"{replica_cpus(llm_replicas):g}"]
    return [*base, *serve, *ray, "--threads", str(threads)]


def server_env(name: str, threads: int) -> tuple[dict[str, str], dict[str, str]]:
    """(the whole environment, the variables this benchmark set) of a server subprocess."""
    extra = {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "DO_NOT_TRACK": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if name == "ray":
        extra["RAY_USAGE_STATS_ENABLED"] = "0"
    env = {key: value for key, value in os.environ.items() if key not in ("OPENAI_API_KEY", "SEEDX_API_KEY")}
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env, extra


def wait_ready(server: Server, timeout: float) -> float:
    """Seconds until ``GET /health`` answers 200 (503 while a Ray deployment has no running replica yet)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"the {server.name} server exited with code {server.process.returncode} before it was ready:\n"
                f"{log_tail(server.log)}"
            )
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass  # not listening yet, or 503 (HTTPError is a URLError): not ready
        time.sleep(0.5)
    raise RuntimeError(f"the {server.name} server was not ready within {timeout:.0f} s:\n{log_tail(server.log)}")


def stop_server(server: Server, timeout: float = 90.0) -> dict[str, Any]:
    """SIGTERM the server, wait, end what is left of its session by id; report what happened."""
    report: dict[str, Any] = {"signal": "SIGTERM"}
    started = time.monotonic()
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            report["killed"] = True
            server.process.kill()
            server.process.wait(timeout=30)
    report["exit_code"] = server.process.returncode
    report["stop_s"] = round(time.monotonic() - started, 2)
    left = session_processes(server.sid)
    deadline = time.monotonic() + 15
    while left and time.monotonic() < deadline:  # Ray's daemons may take a moment to follow their driver
        time.sleep(1)
        left = session_processes(server.sid)
    report["left_in_session"] = [f"{p.pid} {p.cmdline[:80]}" for p in left]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
        if left:
            time.sleep(3)
            left = session_processes(server.sid)
    return report


@contextlib.contextmanager
def running_server(
    name: str, model: str, threads: int, llm_replicas: int, log_dir: Path, startup_timeout: float
) -> Iterator[Server]:
    """Start server ``name`` on a free port with a fresh memory folder, wait until ready, stop it at the end."""
    port = free_port()
    env, extra = server_env(name, threads)
    with tempfile.TemporaryDirectory(prefix=f"bench-serving-{name}-") as folder:
        command = server_command(name, model, port, Path(folder) / "memory", llm_replicas, threads)
        log = log_dir / f"{name}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = Server(name, process, f"http://127.0.0.1:{port}", log)
        server.info = {"command": command, "env": extra, "log": str(log)}
        try:
            server.info["ready_s"] = round(wait_ready(server, startup_timeout), 2)
            yield server
        finally:
            server.info["stop"] = stop_server(server)


def model_processes(server: Server) -> list[ProcStat]:
    """The processes that hold the model: the server itself, or Ray's LLM and de-tokenizer replicas."""
    live = session_processes(server.sid)
    if server.name == "single":
        return [p for p in live if p.pid == server.process.pid]
    return [
        p
        for p in live
        if p.cmdline.startswith(("ray::ServeReplica:seedx:SeedXLLM", "ray::ServeReplica:seedx:SeedXDetok"))
    ]


# -- load ---------------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One request: its prompt index, latency, success, completion tokens and answer (chat) or error."""

    index: int
    latency_s: float
    ok: bool
    tokens: int = 0
    text: str | None = None
    error: str | None = None


def chat_prompt(index: int) -> str:
    """A distinct short question per index (the same sequence for both servers, so their answers compare)."""
    shapes = ("circle", "square", "triangle", "star")
    colours = ("red", "green", "blue", "yellow", "purple")
    return (
        f"Question {index}: how many {colours[index % 5]} {shapes[index % 4]}s are there, and where is number {index}?"
    )


def make_request(workload: str, model: str, max_tokens: int, image_steps: int) -> Callable[[Any, int], Outcome]:
    """The request of ``workload`` for prompt ``index``, on an ``openai.OpenAI`` client; timed, errors kept."""

    def chat(client: Any, index: int) -> Outcome:
        answer = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": chat_prompt(index)}],
            max_tokens=max_tokens,
            temperature=0,
            seed=1234,
        )
        tokens = answer.usage.completion_tokens if answer.usage else 0
        return Outcome(index, 0.0, True, tokens=tokens, text=answer.choices[0].message.content)

    def image(client: Any, index: int) -> Outcome:
        answer = client.images.generate(
            model=model,
            prompt=f"a {('red', 'green', 'blue')[index % 3]} {('circle', 'square')[index % 2]} number {index}",
            n=1,
            extra_body={"seed": 1234, "num_inference_steps": image_steps},
        )
        return Outcome(index, 0.0, bool(answer.data and answer.data[0].b64_json))

    work = chat if workload == "chat" else image

    def timed(client: Any, index: int) -> Outcome:
        started = time.perf_counter()
        try:
            outcome = work(client, index)
        except Exception as error:  # an error is a result here: counted, and its first lines stored
            outcome = Outcome(index, 0.0, False, error=f"{type(error).__name__}: {str(error)[:200]}")
        outcome.latency_s = time.perf_counter() - started
        return outcome

    return timed


def run_load(
    clients: Sequence[Any],
    request: Callable[[Any, int], Outcome],
    first_index: int,
    count: int | None,
    duration: float | None,
) -> tuple[list[Outcome], float]:
    """One client thread per client; they take prompt indices ``first_index, first_index + 1, ...`` until
    ``count`` requests were sent or ``duration`` seconds passed. Returns the outcomes and the wall time."""
    lock = threading.Lock()
    state = {"next": first_index}
    outcomes: list[Outcome] = []
    start_gate = threading.Barrier(len(clients) + 1)
    deadline: list[float] = []

    def take() -> int | None:
        with lock:
            index = state["next"]
            if count is not None and index >= first_index + count:
                return None
            if duration is not None and time.perf_counter() >= deadline[0]:
                return None
            state["next"] += 1
            return index

    def worker(client: Any) -> None:
        start_gate.wait()
        while (index := take()) is not None:
            outcome = request(client, index)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(client,), daemon=True) for client in clients]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    deadline.append(started + (duration or 0.0))
    start_gate.wait()
    for thread in threads:
        thread.join()
    return sorted(outcomes, key=lambda o: o.index), time.perf_counter() - started


def summarise(outcomes: Sequence[Outcome], wall_s: float) -> dict[str, Any]:
    """requests/s, latency percentiles (ms) and errors of one cell."""
    latencies = np.array([o.latency_s for o in outcomes if o.ok]) * 1000.0
    completed = int(latencies.size)
    row: dict[str, Any] = {
        "requests": len(outcomes),
        "completed": completed,
        "errors": len(outcomes) - completed,
        "wall_s": round(wall_s, 4),
        "requests_per_s": completed / wall_s if wall_s > 0 else 0.0,
        "tokens_per_s": sum(o.tokens for o in outcomes if o.ok) / wall_s if wall_s > 0 else 0.0,
        "error_samples": sorted({o.error for o in outcomes if o.error})[:3],
    }
    if completed:
        p50, p95 = np.percentile(latencies, [50, 95])
        row.update(p50_ms=float(p50), p95_ms=float(p95), mean_ms=float(latencies.mean()), max_ms=float(latencies.max()))
    return row


def bench_server(
    server: Server, args: argparse.Namespace, workloads: Sequence[str], concurrency: Sequence[int]
) -> dict[str, Any]:
    """Every (workload, concurrency) cell on one running server."""
    import openai

    clients = [
        openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=args.request_timeout)
        for _ in range(max(concurrency))
    ]
    server.info["model_processes"] = [
        {"pid": p.pid, "cmd": p.cmdline[:60], "omp": omp_threads(p.pid)} for p in model_processes(server)
    ]
    server.info["random_weights_fallback"] = "RANDOM weights" in log_tail(server.log, 10**7)
    results: dict[str, Any] = {}
    for workload in workloads:
        request = make_request(workload, args.model, args.max_tokens, args.image_steps)
        count = None if args.duration else args.requests if workload == "chat" else args.image_requests
        # Warm-up prompts (indices from 10**6, never timed): one request that waits for the model, then before
        # each cell max(--warmup, clients) requests at that cell's concurrency.
        warm, _ = run_load(clients[:1], request, 10**6, 1, None)
        warm_index, warmup_errors = 10**6 + 1, sum(not o.ok for o in warm)
        cells: dict[str, Any] = {}
        index = 0
        texts: dict[int, str | None] = {}
        for clients_n in concurrency:
            warm, _ = run_load(clients[:clients_n], request, warm_index, max(args.warmup, clients_n), None)
            warm_index += len(warm)
            warmup_errors += sum(not o.ok for o in warm)
            load_before = load_average()
            cpu_before, client_before = session_cpu_seconds(server.sid), _own_cpu_seconds()
            outcomes, wall = run_load(clients[:clients_n], request, index, count, args.duration)
            cpu_used = session_cpu_seconds(server.sid) - cpu_before
            client_used = _own_cpu_seconds() - client_before
            index += len(outcomes)
            texts.update({o.index: o.text for o in outcomes if o.ok})
            row = summarise(outcomes, wall)
            row.update(
                concurrency=clients_n,
                server_cpu_s=round(cpu_used, 3),
                server_cpu_ms_per_request=round(1000 * cpu_used / row["completed"], 2) if row["completed"] else None,
                server_cores_busy=round(cpu_used / wall, 3) if wall > 0 else 0.0,
                client_cores_busy=round(client_used / wall, 3) if wall > 0 else 0.0,
                load_before=load_before,
                load_after=load_average(),
            )
            cells[str(clients_n)] = row
            print(
                f"  {server.name:6s} {workload:5s} c={clients_n:<3d} {row['requests_per_s']:7.2f} req/s  "
                f"p50 {row.get('p50_ms', float('nan')):8.1f} ms  p95 {row.get('p95_ms', float('nan')):8.1f} ms  "
                f"errors {row['errors']}",
                flush=True,
            )
        cells["warmup_errors"] = warmup_errors
        if workload == "chat":
            cells["answers"] = {str(k): v for k, v in sorted(texts.items())}
        results[workload] = cells
    return results


# -- report -------------------------------------------------------------------------------------------------------
def ratios(data: dict[str, Any], workload: str, concurrency: Sequence[int]) -> dict[str, dict[str, float]]:
    """Ray/single for requests/s and p50 at each concurrency (where both servers ran)."""
    single = data["servers"].get("single", {}).get("results", {}).get(workload)
    ray = data["servers"].get("ray", {}).get("results", {}).get(workload)
    if not single or not ray:
        return {}
    out: dict[str, dict[str, float]] = {}
    for c in concurrency:
        a, b = single.get(str(c)), ray.get(str(c))
        if not a or not b or "p50_ms" not in a or "p50_ms" not in b or not a["requests_per_s"]:
            continue
        out[str(c)] = {
            "requests_per_s": b["requests_per_s"] / a["requests_per_s"],
            "p50": b["p50_ms"] / a["p50_ms"],
            "p95": b["p95_ms"] / a["p95_ms"],
        }
    return out


def print_tables(data: dict[str, Any], concurrency: Sequence[int]) -> None:
    """One markdown table per workload, the ratios Ray/single, the answer check and the caveat."""
    for workload in data["workloads"]:
        print(f"\n## {workload}: model {data['model']}, {data['per_cell']} per cell")
        print("| server | clients | requests/s | p50 ms | p95 ms | errors | tokens/s | cores busy: server, client |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, server in data["servers"].items():
            cells = server.get("results", {}).get(workload, {})
            for c in concurrency:
                row = cells.get(str(c))
                if not row:
                    continue
                tokens = f"{row['tokens_per_s']:.1f}" if workload == "chat" else "-"
                print(
                    f"| {name} | {c} | {row['requests_per_s']:.2f} | {row.get('p50_ms', float('nan')):.1f} | "
                    f"{row.get('p95_ms', float('nan')):.1f} | {row['errors']} | {tokens} | "
                    f"{row['server_cores_busy']:.2f}, {row['client_cores_busy']:.2f} |"
                )
        found = data["ratios"].get(workload, {})
        if found:
            rps = ", ".join(f"c={c} {r['requests_per_s']:.2f}x" for c, r in found.items())
            p50 = ", ".join(f"c={c} {r['p50']:.2f}x" for c, r in found.items())
            print(f"ratio ray/single (requests/s): {rps}")
            print(f"ratio ray/single (p50 latency): {p50}")
        same = data.get("answers_equal", {}).get(workload)
        if same is not None:
            print(f"answers equal single vs ray: {same['equal']}/{same['compared']}")
    print("\n" + CAVEAT.format(cpus=data["machine"]["cpu_count"], threads=data["threads"]))


def compare_answers(data: dict[str, Any]) -> dict[str, Any]:
    """Greedy answers to the same prompt index on both servers (chat), compared."""
    out = {}
    single = data["servers"].get("single", {}).get("results", {}).get("chat", {}).get("answers")
    ray = data["servers"].get("ray", {}).get("results", {}).get("chat", {}).get("answers")
    if single and ray:
        common = sorted(set(single) & set(ray), key=int)
        out["chat"] = {"compared": len(common), "equal": sum(single[k] == ray[k] for k in common)}
    return out


def save(path: Path | None, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (after each server, so a failed run keeps what it measured)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def cleanup_ray(before: set[int]) -> dict[str, Any]:
    """Ray processes left after the servers stopped (none expected); ``ray stop --force`` only if some are left
    and none existed before this benchmark started (it would stop those too)."""
    left = sorted(ray_pids() - before)
    report: dict[str, Any] = {"left_after_stop": left, "ray_stop": False}
    if left and not before:
        ray = Path(sys.executable).with_name("ray")
        executable = str(ray) if ray.exists() else shutil.which("ray")
        if executable:
            subprocess.run([executable, "stop", "--force"], capture_output=True, timeout=120, check=False)
            report["ray_stop"] = True
            time.sleep(2)
            report["left_after_ray_stop"] = sorted(ray_pids() - before)
    return report


# -- main ---------------------------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _names(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",") if part.strip()]
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(choices)}, got {text!r}")
        return values

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The flags, with ``--quick``'s defaults filled in, checked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model of both servers (default mini; tiny-random with --quick)")
    parser.add_argument(
        "--servers", type=_names(SERVERS), default=None, help="single,ray (default; single with --quick)"
    )
    parser.add_argument("--workloads", type=_names(WORKLOADS), default=["chat"], help="chat (default) and/or image")
    parser.add_argument("--concurrency", type=_ints, default=None, help="concurrent clients per cell (default 1,4,16)")
    parser.add_argument("--requests", type=int, default=None, help="timed chat requests per cell (default 32)")
    parser.add_argument("--image-requests", type=int, default=8, help="timed image requests per cell (default 8)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per cell instead of a request count")
    parser.add_argument("--warmup", type=int, default=4, help="warm-up requests per workload (at least 1 per client)")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens of each chat request (default 16)")
    parser.add_argument("--image-steps", type=int, default=2, help="num_inference_steps of image requests (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model process (default 1)")
    parser.add_argument("--llm-replicas", type=int, default=2, help="LLM+ViT replicas of the Ray server (default 2)")
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="seconds a server may take to start")
    parser.add_argument("--request-timeout", type=float, default=300.0, help="client timeout per request (seconds)")
    parser.add_argument("--log-dir", type=Path, default=None, help="server logs (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    parser.add_argument(
        "--quick", action="store_true", help="tiny-random, concurrency 1,2, 4 requests, chat only, single server only"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.model = args.model or "tiny-random"
        args.servers = args.servers or ["single"]
        args.concurrency = args.concurrency or [1, 2]
        args.requests = args.requests or 4
        args.workloads = ["chat"]
        args.warmup = min(args.warmup, 2)
    args.model = args.model or "mini"
    args.servers = args.servers or list(SERVERS)
    args.concurrency = args.concurrency or [1, 4, 16]
    args.requests = args.requests or 32
    for name in ("requests", "image_requests", "max_tokens", "image_steps", "threads", "llm_replicas"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be > 0 seconds")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Start each server, load it at every concurrency, stop it; print the tables and ratios, write ``--out``."""
    args = parse_args(argv)
    machine = machine_info()
    counts = {"chat": f"{args.requests} chat", "image": f"{args.image_requests} image"}
    per_cell = f"{args.duration:g} s" if args.duration else " / ".join(counts[w] for w in args.workloads) + " requests"
    data: dict[str, Any] = {
        "machine": machine,
        "load_before": load_average(),
        "model": args.model,
        "workloads": args.workloads,
        "concurrency": args.concurrency,
        "per_cell": per_cell,
        "requests": args.requests,
        "image_requests": args.image_requests,
        "duration_s": args.duration,
        "warmup": args.warmup,
        "max_tokens": args.max_tokens,
        "image_steps": args.image_steps,
        "threads": args.threads,
        "llm_replicas": args.llm_replicas,
        "servers": {},
    }
    print(machine_line(machine))
    print(f"load average before: {', '.join(map(str, data['load_before']))}", flush=True)
    ray_before = ray_pids()
    started = time.monotonic()
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-serving-logs-") as scratch:
        log_dir = args.log_dir or Path(scratch)
        log_dir.mkdir(parents=True, exist_ok=True)
        for name in args.servers:
            entry: dict[str, Any] = {"load_before": load_average()}
            data["servers"][name] = entry
            print(f"\n{name}: starting ({args.model}) ...", flush=True)
            try:
                with running_server(
                    name, args.model, args.threads, args.llm_replicas, log_dir, args.startup_timeout
                ) as server:
                    entry["server"] = server.info
                    print(f"{name}: ready in {server.info['ready_s']} s at {server.url}", flush=True)
                    entry["results"] = bench_server(server, args, args.workloads, args.concurrency)
            except Exception as error:
                failed = True
                entry["error"] = f"{type(error).__name__}: {error}"
                print(f"{name}: FAILED: {entry['error']}", file=sys.stderr, flush=True)
            entry["load_after"] = load_average()
            stop = entry.get("server", {}).get("stop", {})
            if stop:
                print(
                    f"{name}: stopped in {stop['stop_s']} s (exit code {stop['exit_code']}); "
                    f"left in its session: {len(stop['left_in_session'])}",
                    flush=True,
                )
            save(args.out, data)
        data["ray_cleanup"] = cleanup_ray(ray_before)
    data["load_after"] = load_average()
    data["wall_s"] = round(time.monotonic() - started, 1)
    data["ratios"] = {w: ratios(data, w, args.concurrency) for w in args.workloads}
    data["answers_equal"] = compare_answers(data)
    save(args.out, data)
    for name, entry in data["servers"].items():
        info = entry.get("server", {})
        env = " ".join(f"{k}={v}" for k, v in info.get("env", {}).items() if k.startswith(("OMP", "RAY_OVERRIDE")))
        omp = sorted({str(p["omp"]) for p in info.get("model_processes", [])})
        print(
            f"{name}: {len(info.get('model_processes', []))} model process(es), OMP_NUM_THREADS seen {omp}; {env}"
            + ("; WARNING: the server fell back to RANDOM weights" if info.get("random_weights_fallback") else "")
        )
    print_tables(data, args.concurrency)
    cleanup = data["ray_cleanup"]
    print(
        f"\nRay processes left after the servers stopped: {len(cleanup['left_after_stop'])}"
        + (" (ray stop --force was run)" if cleanup["ray_stop"] else "")
    )
    print(f"load average after: {', '.join(map(str, data['load_after']))}; wall time {data['wall_s']} s")
    if args.out:
        print(f"results: {args.out}")
    errors = any(
        row.get("errors")
        for entry in data["servers"].values()
        for cells in entry.get("results", {}).values()
        for row in cells.values()
        if isinstance(row, dict) and "errors" in row
    )
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
