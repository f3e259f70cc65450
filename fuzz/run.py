"""The long structure-aware fuzz run (the short one is tests/test_fuzz.py).

    python fuzz/run.py --cases 100000 --seconds 1500 --seed 1

Targets, round-robin in chunks until each has its share of `--cases` or the time budget is
spent: `from_bytes` (mutated graphs decoded in-process; several mutations of each generated
graph), `engine` (whatever decodes, run through every Engine method in-process) and `rpc`
(valid and mutated requests to every RPC of a live `gradserve serve` subprocess, health checked
every 200 calls, a known-good request at the end). The strategies and oracles are the tests'
(tests/strategies.py, tests/fuzz_targets.py). Every finding is printed with its traceback and
its input saved under fuzz/findings/; the exit status is 1 if there was any.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import fuzz_targets as T  # noqa: E402
import strategies as S  # noqa: E402
from hypothesis import given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

MUTATIONS_PER_GRAPH = 16


@st.composite
def mutation_batch(draw):
    case = draw(S.cases())
    data = case.graph.to_bytes()
    other = draw(S.cases()).graph.to_bytes()
    out = []
    for _ in range(MUTATIONS_PER_GRAPH):
        if draw(st.booleans()):
            out.append(draw(S.mutate_bytes(data, other if draw(st.booleans()) else data)))
        else:
            out.append(draw(S.mutate_fields(data)))
    return case, out


class Fuzzer:
    def __init__(self, args):
        self.args = args
        self.counts = collections.Counter()  # cases per target
        self.outcomes = collections.defaultdict(collections.Counter)
        self.findings = collections.Counter()
        self.findings_dir = HERE / "findings"

    def finding(self, target, exc, data: bytes):
        key = f"{target}: {str(exc)[:200]}"
        self.findings[key] += 1
        if self.findings[key] == 1:
            print(f"FINDING {key}", flush=True)
            traceback.print_exception(exc.__cause__ or exc, limit=-6)
            self.findings_dir.mkdir(exist_ok=True)
            name = hashlib.sha256(data).hexdigest()[:16]
            (self.findings_dir / f"{target}-{name}.bin").write_bytes(data)

    def from_bytes(self, batch):
        _case, variants = batch
        for data in variants:
            self.counts["from_bytes"] += 1
            try:
                graph = T.decode(data)
                self.outcomes["from_bytes"]["decoded" if graph else "GraphError"] += 1
            except T.Bug as exc:
                self.finding("from_bytes", exc, data)

    def engine(self, batch):
        case, variants = batch
        for data in [case.graph.to_bytes(), *variants[:2]]:
            try:
                graph = T.decode(data)
                if graph is None:
                    continue
                self.counts["engine"] += 1
                for outcome in T.run_engine(graph, seconds=3.0).values():
                    self.outcomes["engine"][outcome] += 1
            except T.Bug as exc:
                self.finding("engine", exc, data)

    def rpc(self, request):
        method, case, data, _mutated = request
        self.counts["rpc"] += 1
        try:
            code = self.server.call(method, data, timeout=10.0, loop=T.has_loop(case.graph) or None)
            self.outcomes["rpc"][f"{method} {code.name}"] += 1
            if self.counts["rpc"] % 200 == 0:
                self.server.check_alive()
        except T.Bug as exc:
            self.finding(f"rpc-{method}", exc, data)

    def run(self):
        a = self.args
        shares = {"from_bytes": a.cases - a.rpc_cases - a.engine_cases, "engine": a.engine_cases}
        shares["rpc"] = a.rpc_cases
        per_example = {"from_bytes": MUTATIONS_PER_GRAPH, "engine": 1, "rpc": 1}
        strategies = {"from_bytes": mutation_batch(), "engine": mutation_batch()}
        strategies["rpc"] = S.requests()
        self.server = T.Target(subprocess_server=True)
        start = time.monotonic()
        chunk = 0
        try:
            while time.monotonic() - start < a.seconds and any(
                self.counts[t] < n for t, n in shares.items()
            ):
                for target, share in shares.items():
                    if self.counts[target] >= share or time.monotonic() - start > a.seconds:
                        continue
                    chunk += 1
                    n = max(1, min(a.chunk, (share - self.counts[target]) // per_example[target]))
                    fn = getattr(self, target)  # a bound method: hypothesis passes the example

                    chunk_test = seed(a.seed * 1_000_003 + chunk)(
                        settings(settings.get_profile("fuzz-long"), max_examples=n)(
                            given(strategies[target])(fn)
                        )
                    )
                    chunk_test()
                elapsed = time.monotonic() - start
                print(
                    f"[{elapsed:7.0f}s] {dict(self.counts)} findings={sum(self.findings.values())}",
                    flush=True,
                )
            self.server.check_alive()
            self.server.known_good()
        except T.Bug as exc:
            self.finding("server", exc, b"")
        finally:
            self.server.close()
        elapsed = time.monotonic() - start
        print(f"\nDONE in {elapsed:.0f}s: {sum(self.counts.values())} cases {dict(self.counts)}")
        for target, outcomes in self.outcomes.items():
            print(f"  {target}: {dict(sorted(outcomes.items()))}")
        print(f"findings: {len(self.findings)} distinct, {sum(self.findings.values())} in all")
        for key, n in self.findings.items():
            print(f"  {n} x {key}")
        return 1 if self.findings else 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", type=int, default=100_000, help="cases in all (default 100000)")
    p.add_argument("--rpc-cases", type=int, default=10_000, help="of which RPC calls")
    p.add_argument("--engine-cases", type=int, default=3_000, help="of which engine graphs")
    p.add_argument("--seconds", type=float, default=3600, help="time budget (default 3600)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--chunk", type=int, default=500, help="hypothesis examples per chunk")
    return Fuzzer(p.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
