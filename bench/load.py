"""A long load run against `gradserve serve`, started as a user starts it.

A server subprocess (`python -m gradserve serve --port P --metrics-port M` on 127.0.0.1), then
N client threads in this process, each with its own `gs.Client`, calling for S seconds a mix
of every method (evaluate, grad, value_and_grad, vjp, jvp, jacobian fwd and rev, hvp, hessian,
check_grad) on three graphs: the scalar example f(x1, x2), a small MLP whose data (256 KiB)
travels by digest, and an RNN written with `gs.scan`. Half the calls pass the data held fixed
(read-only arrays, compared with the results a local `gs.Engine` gave for them), half pass
new parameters (and, for the MLP, now and then a new 256 KiB data batch, which travels inline).

Reported: errors by code (any is a failure; a wrong result counts as WRONG_RESULT), requests/s,
p50/p99 latency per method as the client sees it (queueing in the server included: the server
computes `--workers` calls at once), and the server's resident memory (VmRSS from
/proc/PID/status, once a second). Memory must be flat after the warm-up: the growth from the
end of the warm-up to the end of the run is reported, and above `--max-growth-mib` (20 MiB by
default) the run fails. Why 20 MiB: everything the server keeps is bounded and reached within
the warm-up (three graphs and their plans, a few cached tensors, glibc arenas that keep freed
memory, see server.tune_malloc); a leak of one 1 KiB object per request, at the few hundred
requests/s of a 2-core machine, would add 20 MiB within a minute, while the allocator's own
noise seen here is a few MiB. After the run the gauges gradserve_inflight_requests and
gradserve_tape_bytes_in_use must come back to 0 (a stuck gauge fails the run).

Clients are threads (one process, separate `gs.Client`s and channels): on a 2-core machine
processes would only add interpreters competing for the same cores. Figures on a shared
machine vary with its load: read them as ratios and percentiles of one run.

    python bench/load.py                              # 16 clients, 60 s (warm-up 10 s)
    python bench/load.py --clients 8 --seconds 20 --warmup 5
    python bench/load.py --target 127.0.0.1:50051     # a running server (RSS: --pid)

Exit status: 0 when there were no errors, the gauges returned to 0 and memory grew at most
--max-growth-mib; 1 otherwise.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import contextlib
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import numpy as np
from gradserve.server.process import ServerProcess as Server
from prometheus_client.parser import text_string_to_metric_families

import gradserve as gs
import gradserve.numpy as gnp

MiB = 1 << 20
API_METHODS = (
    "evaluate",
    "grad",
    "value_and_grad",
    "vjp",
    "jvp",
    "jacobian_fwd",
    "jacobian_rev",
    "hvp",
    "hessian",
    "check_grad",
)


# ---- the server ---------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc/PID/status (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def scrape(metrics_url: str) -> dict:
    """{(name, frozenset(labels)): value} of every sample the server exports."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def requests_by_code(samples: dict) -> dict:
    out: dict = {}
    for (name, labels), value in samples.items():
        if name == "gradserve_requests_total":
            code = dict(labels)["code"]
            out[code] = out.get(code, 0) + value
    return out


def wait_for_gauges_zero(metrics_url: str, timeout: float = 10.0) -> dict:
    """Poll /metrics until gradserve_inflight_requests and gradserve_tape_bytes_in_use are 0;
    returns their last values (not 0 if the time ran out)."""
    names = ("gradserve_inflight_requests", "gradserve_tape_bytes_in_use")
    deadline = time.monotonic() + timeout
    while True:
        s = scrape(metrics_url)
        values = {n: s.get((n, frozenset()), float("nan")) for n in names}
        if all(v == 0 for v in values.values()) or time.monotonic() > deadline:
            return values
        time.sleep(0.05)


# ---- the workload -------------------------------------------------------------------------------


def _readonly(a):
    a = np.array(a, dtype=np.float64)
    a.flags.writeable = False
    return a


def scalar_f(x1, x2):
    return gnp.log(x1) + x1 * x2 - gnp.sin(x2)


MLP_N, MLP_IN, MLP_HIDDEN = 2048, 16, 8  # X: 2048 x 16 float64 = 256 KiB, travels by digest


def mlp_loss(W1, b1, W2, X, y):
    h = gnp.tanh(X @ W1 + b1)
    return gnp.mean((h @ W2 - y) ** 2) + 1e-3 * gnp.sum(W1 * W1)


RNN_T, RNN_H, RNN_IN = 16, 6, 3


def rnn_loss(W, U, h0, xs):
    def step(carry, x):
        h, total = carry
        h = gnp.tanh(W @ h + U @ x)
        return (h, total + gnp.sum(h * h)), ()

    (_, total), _ = gs.scan(step, (h0, 0.0), xs)
    return total


@dataclass
class Workload:
    """One graph: its fixed arguments (read-only), which are parameters (perturbed in the
    `changing` variant), which to differentiate, and how to make new data."""

    name: str
    graph: gs.Graph
    fixed: tuple
    params: tuple  # indices of the parameters
    argnums: object  # for grad, value_and_grad, jacobian and hessian
    small_argnum: int  # a small input, for jacobian and hessian
    new_data: object = None  # rng -> (index, array) of a new data batch, or None
    check_grad: str | None = None  # check_grad's method, or None: not checked here
    expected: dict = field(default_factory=dict)

    def __post_init__(self):
        # Zero tangents for the data: read-only, so a Client sends a large one once.
        self.zeros = tuple(_readonly(np.zeros(np.shape(a))) for a in self.fixed)


def workloads(seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    scalar = Workload(
        "scalar",
        gs.trace(scalar_f, 2.0, 5.0),
        (_readonly(2.0), _readonly(5.0)),
        params=(0, 1),
        argnums=(0, 1),
        small_argnum=0,
        check_grad="complex",
    )
    X = rng.normal(size=(MLP_N, MLP_IN))
    y = np.tanh(X @ rng.normal(size=MLP_IN))
    mlp = Workload(
        "mlp",
        gs.trace(
            mlp_loss,
            gs.Spec((MLP_IN, MLP_HIDDEN)),
            gs.Spec((MLP_HIDDEN,)),
            gs.Spec((MLP_HIDDEN,)),
            gs.Spec((MLP_N, MLP_IN)),
            gs.Spec((MLP_N,)),
        ),
        tuple(
            _readonly(a)
            for a in (
                0.3 * rng.normal(size=(MLP_IN, MLP_HIDDEN)),
                0.1 * rng.normal(size=MLP_HIDDEN),
                0.3 * rng.normal(size=MLP_HIDDEN),
                X,
                y,
            )
        ),
        params=(0, 1, 2),
        argnums=(0, 1, 2),
        small_argnum=2,
        new_data=lambda r: (3, r.normal(size=(MLP_N, MLP_IN))),
    )
    rnn = Workload(
        "rnn",
        gs.trace(
            rnn_loss,
            gs.Spec((RNN_H, RNN_H)),
            gs.Spec((RNN_H, RNN_IN)),
            gs.Spec((RNN_H,)),
            gs.Spec((RNN_T, RNN_IN)),
        ),
        tuple(
            _readonly(a)
            for a in (
                0.3 * rng.normal(size=(RNN_H, RNN_H)),
                0.5 * rng.normal(size=(RNN_H, RNN_IN)),
                0.1 * rng.normal(size=RNN_H),
                rng.normal(size=(RNN_T, RNN_IN)),
            )
        ),
        params=(0, 1, 2),
        argnums=(0, 1, 2),
        small_argnum=2,
        check_grad="complex",
    )
    return [scalar, mlp, rnn]


def _ones_like(args):
    return tuple(np.ones(np.shape(a)) for a in args)


def _unit_tangents(w: Workload, args):
    """A tangent on the parameters, zero on the data (read-only zeros: sent once)."""
    return tuple(
        np.full(np.shape(a), 0.5) if i in w.params else w.zeros[i] for i, a in enumerate(args)
    )


def call(backend, w: Workload, method: str, args, **kw):
    """One call of an API method (as named in API_METHODS) on a workload."""
    g = w.graph
    if method == "evaluate":
        return backend.evaluate(g, *args, **kw)
    if method == "grad":
        return backend.grad(g, *args, argnums=w.argnums, **kw)
    if method == "value_and_grad":
        return backend.value_and_grad(g, *args, argnums=w.argnums, **kw)
    if method == "vjp":
        return backend.vjp(g, tuple(args), 1.0, **kw)
    if method == "jvp":
        return backend.jvp(g, tuple(args), _unit_tangents(w, args), **kw)
    if method in ("jacobian_fwd", "jacobian_rev"):
        mode = method.rsplit("_", 1)[1]
        return backend.jacobian(g, *args, argnums=w.small_argnum, mode=mode, **kw)
    if method == "hvp":
        return backend.hvp(g, tuple(args), _unit_tangents(w, args), **kw)
    if method == "hessian":
        return backend.hessian(g, *args, argnums=w.small_argnum, **kw)
    if method == "check_grad":
        return backend.check_grad(g, *args, method=w.check_grad, **kw)
    raise ValueError(method)


def cases(ws) -> list:
    """(workload, method) pairs: every method on every graph, except check_grad on the MLP
    (it would difference each of the 32768 data elements)."""
    return [(w, m) for w in ws for m in API_METHODS if m != "check_grad" or w.check_grad]


def prepare_expected(ws, engine=None):
    """Each case's result on the fixed arguments, from an in-process Engine."""
    engine = engine or gs.Engine()
    for w, m in cases(ws):
        w.expected[m] = call(engine, w, m, w.fixed)


def same(a, b) -> bool:
    if isinstance(a, gs.GradCheck):
        return a.ok == b.ok and same(a.analytic, b.analytic)
    if isinstance(a, (tuple, list)):
        return (
            isinstance(b, (tuple, list))
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b))
        )
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and np.allclose(a, b, rtol=1e-9, atol=1e-12)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, gs.client.ServiceError) and exc.code is not None:
        return exc.code.name
    if isinstance(exc, gs.DeadlineExceeded):
        return "DEADLINE_EXCEEDED"
    if isinstance(exc, gs.LimitError):
        return "RESOURCE_EXHAUSTED"
    if isinstance(exc, (ValueError, TypeError)):
        return "INVALID_ARGUMENT"
    if isinstance(exc, WrongResult):
        return "WRONG_RESULT"
    return type(exc).__name__


class WrongResult(AssertionError):
    pass


# ---- the run ------------------------------------------------------------------------------------


@dataclass
class Report:
    clients: int
    seconds: float
    warmup: float
    elapsed: float = 0.0
    calls: int = 0
    latencies: dict = field(default_factory=dict)  # method -> [seconds]
    errors: dict = field(default_factory=dict)  # code -> count
    error_samples: list = field(default_factory=list)
    rss: list = field(default_factory=list)  # (t, bytes)
    server_codes: dict = field(default_factory=dict)  # code -> calls in the run (server's count)
    gauges_after: dict = field(default_factory=dict)
    variants: dict = field(default_factory=dict)  # "fixed" | "changing" | "new data" -> calls

    @property
    def rps(self) -> float:
        return self.calls / self.elapsed if self.elapsed else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def rss_growth(self):
        """(at the end of the warm-up, at the end, peak after warm-up), in bytes; None without
        samples. Each of the first two is the median of the samples within 2 s of that time,
        so one sample's noise does not decide."""
        if not self.rss:
            return None
        t_end = self.rss[-1][0]
        start = [b for t, b in self.rss if self.warmup <= t < self.warmup + 2] or [self.rss[0][1]]
        end = [b for t, b in self.rss if t > t_end - 2] or [self.rss[-1][1]]
        peak = max((b for t, b in self.rss if t >= self.warmup), default=self.rss[-1][1])
        return float(np.median(start)), float(np.median(end)), float(peak)

    def rss_slope_mib_per_minute(self) -> float:
        pts = [(t, b) for t, b in self.rss if t >= self.warmup]
        if len(pts) < 10:  # too few seconds for a trend
            return float("nan")
        t, b = np.array(pts).T
        return float(np.polyfit(t, b / MiB, 1)[0] * 60)


def run_load(
    target: str,
    *,
    clients: int = 16,
    seconds: float = 60.0,
    warmup: float = 10.0,
    pid: int | None = None,
    metrics_url: str | None = None,
    seed: int = 0,
    timeout: float = 60.0,
    ws=None,
) -> Report:
    """`clients` threads, each with its own gs.Client of `target`, calling for `seconds`."""
    ws = ws or workloads(seed)
    if not ws[0].expected:
        prepare_expected(ws)
    todo = cases(ws)
    report = Report(clients, seconds, warmup)
    lock = threading.Lock()
    before = requests_by_code(scrape(metrics_url)) if metrics_url else {}
    start = time.monotonic()
    stop_at = start + seconds
    done = threading.Event()

    def sampler():
        while True:
            with contextlib.suppress(OSError, RuntimeError):
                report.rss.append((time.monotonic() - start, rss_bytes(pid)))
            if done.wait(1.0):
                return

    def worker(k):
        rng = np.random.default_rng([seed, k])
        lat: dict = {m: [] for m in API_METHODS}
        errors: dict = {}
        samples = []
        variants: dict = {}
        order = rng.permutation(len(todo))  # each client walks every case, in its own order
        i = 0
        with gs.Client(target, timeout=timeout) as cli:
            while time.monotonic() < stop_at:
                w, method = todo[order[i % len(order)]]
                i += 1
                variant = "fixed" if rng.random() < 0.5 else "changing"
                args = w.fixed
                if variant == "changing":
                    args = list(w.fixed)
                    for j in w.params:
                        args[j] = w.fixed[j] * (1 + 0.1 * rng.standard_normal(np.shape(args[j])))
                    if w.new_data is not None and rng.random() < 0.25:
                        j, data = w.new_data(rng)
                        args[j] = data
                        variant = "new data"
                    args = tuple(args)
                variants[variant] = variants.get(variant, 0) + 1
                t0 = time.perf_counter()
                try:
                    out = call(cli, w, method, args)
                    if variant == "fixed" and not same(out, w.expected[method]):
                        raise WrongResult(f"{w.name}.{method}: differs from the Engine's result")
                except Exception as exc:
                    code = error_code(exc)
                    errors[code] = errors.get(code, 0) + 1
                    if len(samples) < 3:
                        samples.append(f"{w.name}.{method} ({variant}): {code}: {exc}"[:300])
                    continue
                lat[method].append(time.perf_counter() - t0)
        with lock:
            for m, values in lat.items():
                report.latencies.setdefault(m, []).extend(values)
            for c, n in errors.items():
                report.errors[c] = report.errors.get(c, 0) + n
            for v, n in variants.items():
                report.variants[v] = report.variants.get(v, 0) + n
            report.error_samples.extend(samples)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    sampling = threading.Thread(target=sampler, daemon=True)
    if pid is not None:
        sampling.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + timeout + 30)  # bounded: each call has a deadline
    if any(t.is_alive() for t in threads):
        report.errors["CLIENT_STUCK"] = sum(t.is_alive() for t in threads)
    report.elapsed = time.monotonic() - start
    done.set()
    if pid is not None:
        sampling.join(5)
    report.calls = sum(len(v) for v in report.latencies.values()) + report.error_count
    if metrics_url:
        report.gauges_after = wait_for_gauges_zero(metrics_url)
        after = requests_by_code(scrape(metrics_url))
        report.server_codes = {
            c: int(after.get(c, 0) - before.get(c, 0))
            for c in after
            if after.get(c, 0) - before.get(c, 0)
        }
    return report


def check(report: Report, max_growth_mib: float | None) -> list:
    """What makes the run fail: a list of reasons (empty: passed)."""
    failures = []
    if report.error_count:
        failures.append(f"{report.error_count} errors: {report.errors}")
    unexercised = [m for m in API_METHODS if not report.latencies.get(m)]
    if unexercised:
        failures.append(f"methods never answered: {unexercised}")
    stuck = {k: v for k, v in report.gauges_after.items() if v != 0}
    if stuck:
        failures.append(f"gauges not back to 0 after the run: {stuck}")
    growth = report.rss_growth()
    if max_growth_mib is not None and growth is not None:
        grew = (growth[1] - growth[0]) / MiB
        if grew > max_growth_mib:
            failures.append(f"resident memory grew {grew:.1f} MiB (> {max_growth_mib} MiB)")
    return failures


def _pct(values, q):
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


def format_report(report: Report) -> str:
    lines = [
        f"clients: {report.clients} threads (one gs.Client each), "
        f"{report.elapsed:.1f} s, warm-up {report.warmup:g} s",
        f"calls: {report.calls}, {report.rps:.1f} requests/s; "
        f"variants {dict(sorted(report.variants.items()))}",
        f"errors: {report.error_count} {dict(report.errors) if report.errors else ''}".rstrip(),
    ]
    lines += [f"  {s}" for s in report.error_samples[:5]]
    if report.server_codes:
        lines.append(
            f"server's requests_total by code: {dict(sorted(report.server_codes.items()))}"
        )
    if report.gauges_after:
        lines.append(
            "gauges after: "
            + ", ".join(f"{k}={v:g}" for k, v in sorted(report.gauges_after.items()))
        )
    lines += [
        "",
        f"{'method':<16}{'calls':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}",
    ]
    for m in API_METHODS:
        v = report.latencies.get(m, [])
        lines.append(
            f"{m:<16}{len(v):>8}{_pct(v, 50):>10.2f}{_pct(v, 99):>10.2f}"
            f"{(max(v) * 1e3 if v else float('nan')):>10.1f}"
        )
    allv = [x for v in report.latencies.values() for x in v]
    lines.append(f"{'all':<16}{len(allv):>8}{_pct(allv, 50):>10.2f}{_pct(allv, 99):>10.2f}")
    growth = report.rss_growth()
    if growth is not None:
        base, end, peak = growth
        first = report.rss[0][1]
        lines += [
            "",
            f"server RSS (VmRSS, {len(report.rss)} samples): start {first / MiB:.1f} MiB, "
            f"end of warm-up {base / MiB:.1f} MiB, end {end / MiB:.1f} MiB, "
            f"peak after warm-up {peak / MiB:.1f} MiB",
            f"growth after warm-up: {(end - base) / MiB:+.1f} MiB "
            f"({100 * (end - base) / base:+.1f}%); "
            f"slope {report.rss_slope_mib_per_minute():+.1f} MiB/min",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=16, help="client threads (default 16)")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the run (60)")
    p.add_argument("--warmup", type=float, default=10.0, help="RSS baseline taken then (10)")
    p.add_argument(
        "--max-growth-mib",
        type=float,
        default=20.0,
        help="fail when RSS grows more after the warm-up (20)",
    )
    p.add_argument("--target", help="a running server (default: start one)")
    p.add_argument("--pid", type=int, help="with --target: its process id, for RSS")
    p.add_argument("--metrics-url", help="with --target: its /metrics URL")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server-flag", action="append", default=[], help="passed to serve")
    a = p.parse_args(argv)
    if a.warmup >= a.seconds:
        p.error("--warmup must be shorter than --seconds")
    ws = workloads(a.seed)
    prepare_expected(ws)
    with contextlib.ExitStack() as stack:
        if a.target:
            target, pid, metrics_url = a.target, a.pid, a.metrics_url
            command = f"--target {a.target}"
        else:
            server = stack.enter_context(Server(*a.server_flag))
            target, pid, metrics_url = server.address, server.pid, server.metrics_url
            command = "python -m gradserve serve --host 127.0.0.1 --port P --metrics-port M"
        print(f"server: {command} (pid {pid}); load on {os.cpu_count()} CPUs", flush=True)
        report = run_load(
            target,
            clients=a.clients,
            seconds=a.seconds,
            warmup=a.warmup,
            pid=pid,
            metrics_url=metrics_url,
            seed=a.seed,
            ws=ws,
        )
    print(format_report(report))
    failures = check(report, a.max_growth_mib if pid is not None else None)
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    if not failures:
        print("OK")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
