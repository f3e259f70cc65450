"""Mutation testing of one engine file with the tests relevant to it (not part of CI).

    pip install -e ".[test,mutation]"
    python tools/mutate.py engine/ops/control.py --time-limit 600
    python tools/mutate.py --list                  # the files and the tests each one runs

Cosmic Ray (the `mutation` extra) plants one small bug at a time in the file, in
place (a `+` made `-`, a `<` made `<=`, a `True` made `False`, a number changed, ...), runs
the tests mapped to that file (TESTS below) and records whether they fail ("killed") or pass
("survived"). A survivor is a change of behaviour no test notices: a missing test, or an
equivalent mutant (one that changes nothing observable). Mutating in place suits this layout,
where `engine/` is imported as `gradserve.engine` through the editable install: the tests see
the mutated file directly. (mutmut 3 copies the sources into `mutants/` and keys its mutants by
module path, which the package-dir mapping defeats: it finds no test for any mutant.)

What a run does:
1. runs the mapped tests once on the unmutated code; tests that fail there (known bugs) are
   deselected for the campaign and listed in the report (`--strict-baseline`: stop instead);
2. `cosmic-ray init` on the file into a session database (kept, so an interrupted run resumes
   where it stopped when run again with the same `--out`), then marks as skipped the operators
   in EXCLUDED_OPERATORS (arithmetic made bitwise or modular: they only raise TypeError on
   floats, each costing a test run);
3. `cosmic-ray exec`, one mutant at a time, each test run bounded by `--timeout` seconds and
   the whole campaign by `--time-limit` seconds (then interrupted; the file is restored);
4. writes `<out>/report.md` (and prints it): the score (killed / (killed + survived)), the
   counts, and every survivor with its diff.

The file is always restored: cosmic-ray puts back the original after each mutant, and this
tool checks the file against the copy it took before starting and writes the copy back if they
differ. Bytecode is neither written nor read for the mutated file (the test runs get
PYTHONDONTWRITEBYTECODE=1 and its stale .pyc is removed before and after), so every test run
imports the mutant it is meant to test. Test runs get OPENBLAS_NUM_THREADS=1 and a raised nice
value (one core's worth of work), a fixed Hypothesis seed (the same examples for every mutant),
no shrinking of a failing example and a Hypothesis database inside `<out>` (what a mutant made
fail is not replayed in the project's own runs).

On a busy machine, narrow the tests to those that exercise the file (`-k EXPR`, as pytest's): a
survivor costs a run of all of them. After adding tests, `--rerun-survivors` with the same
`--out` runs only the previous survivors again (the killed stay killed while no test is
removed), so the report then gives the score after.

A whole campaign on a large file takes long (mutants after the excluded operators:
engine/ops/control.py 130, engine/plan.py 638, engine/ops/elementwise.py 913,
engine/ops/loops.py 1449), each a few seconds to half a minute of tests on two shared cores.
`--sample N` runs a uniform random draw of N of them (reproducible with `--seed`; the others
are reported as not sampled), whose killed share estimates the whole file's; `--time-limit`
stops a campaign, and running it again with the same `--out` resumes it; `--operators REGEX`
plants only some kinds of bugs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The tests that exercise each engine file (a run stops at the first failure): the selections
# of the runs in tools/MUTATION.md, which narrow some with -k. Other files: --tests.
TESTS = {
    "engine/ops/elementwise.py": [
        "tests/test_nan_guards.py",
        "tests/test_mixed_precision_contractions.py",
        "tests/test_numpy_semantics.py",
        "tests/test_neutral_operands.py",
        "tests/test_ops.py",
        "tests/test_numpy_breadth.py",
        "tests/test_custom_rules.py",
        "tests/test_wire_doc.py",
    ],
    "engine/ops/contraction.py": [
        "tests/test_shape_rules.py",
        "tests/test_einsum_cases.py",
        "tests/test_mixed_precision_contractions.py",
        "tests/test_plan_buffer_reuse.py",
        "tests/test_ops.py",
        "tests/test_wire_doc.py",
        "tests/test_plan_kernels.py",
        "tests/test_batched_jacobians.py",
    ],
    "engine/ops/common.py": [
        "tests/test_shape_rules.py",
        "tests/test_reduction_rules.py",
        "tests/test_mixed_precision_contractions.py",
        "tests/test_nan_guards.py",
        "tests/test_ops.py",
    ],
    "engine/ops/reductions.py": [
        "tests/test_reduction_rules.py",
        "tests/test_wire_doc.py",
        "tests/test_ops.py",
    ],
    "engine/ops/shapes.py": [
        "tests/test_shape_rules.py",
        "tests/test_shape_derivatives.py",
        "tests/test_ops.py",
        "tests/test_plan_buffer_reuse.py",
        "tests/test_wire_doc.py",
    ],
    "engine/ops/indexing.py": [
        "tests/test_indexing_rules.py",
        "tests/test_ops.py",
        "tests/test_plan_buffer_reuse.py",
        "tests/test_numpy_breadth.py",
        "tests/test_numpy_semantics.py",
        "tests/test_wire_doc.py",
    ],
    "engine/ops/linalg.py": ["tests/test_linalg.py", "tests/test_ops.py"],
    "engine/ops/one_hot.py": [
        "tests/test_batched_jacobians.py",
        "tests/test_scale_folding.py",
        "tests/test_argnums.py",
        "tests/test_ops.py",
    ],
    "engine/ops/custom.py": [
        "tests/test_custom_rules.py",
        "tests/test_control_flow.py",
        "tests/test_batched_control_flow.py",
        "tests/test_wire_doc.py",
    ],
    "engine/ops/control.py": [
        "tests/test_cond_shape_rules.py",
        "tests/test_batched_control_flow.py",
        "tests/test_control_flow.py",
        "tests/test_pytree_carries.py",
        "tests/test_loop_residuals.py",
        "tests/test_wire_doc.py",
    ],
    "engine/ops/loops.py": [
        "tests/test_loop_shape_rules.py",
        "tests/test_scan_reverse.py",
        "tests/test_tape_accounting.py",
        "tests/test_batched_control_flow.py",
        "tests/test_control_flow.py",
        "tests/test_loop_residuals.py",
        "tests/test_pytree_carries.py",
        "tests/test_wire_doc.py",
    ],
    "engine/ops/bodies.py": [
        "tests/test_control_flow.py",
        "tests/test_batched_control_flow.py",
        "tests/test_scan_reverse.py",
        "tests/test_loop_residuals.py",
    ],
    "engine/tape.py": [
        "tests/test_scan_reverse.py",
        "tests/test_tape_accounting.py",
        "tests/test_control_flow.py",
    ],
    "engine/control.py": [
        "tests/test_control_flow.py",
        "tests/test_batched_control_flow.py",
        "tests/test_scan_reverse.py",
    ],
    "engine/plan.py": [
        "tests/test_plan_buffer_reuse.py",
        "tests/test_plan.py",
        "tests/test_plan_kernels.py",
        "tests/test_plan_cache.py",
        "tests/test_tape_accounting.py",
        "tests/test_engine_memory.py",
        "tests/test_control_flow.py",
        "tests/test_loop_residuals.py",
    ],
    "engine/transforms.py": [
        "tests/test_reverse_mode_outputs.py",
        "tests/test_tape_accounting.py",
        "tests/test_engine_memory.py",
        "tests/test_nan_guards.py",
        "tests/test_batched_control_flow.py",
        "tests/test_ops.py",
    ],
    "engine/numerical.py": ["tests/test_batched_control_flow.py", "tests/test_ops.py"],
    "engine/simplify.py": ["tests/test_ops.py", "tests/test_graph.py"],
}

# Arithmetic replaced by shifts, bitwise or modular operators: on floats these raise TypeError
# (killed at once) or are seldom meaningful; each would still cost a full test run.
EXCLUDED_OPERATORS = [
    r"core/ReplaceBinaryOperator_(Add|Sub|Mul|Div|Pow)_(RShift|LShift|BitOr|BitAnd|BitXor|FloorDiv|Mod)$",
    r"core/ReplaceBinaryOperator_(FloorDiv|Mod)_(RShift|LShift|BitOr|BitAnd|BitXor)$",
]

# -x: a mutant is killed at the first failing test; a fixed Hypothesis seed: the same examples
# for every mutant (tests/test_ops.py draws random points)
PYTEST = [
    sys.executable,
    "-B",
    "-m",
    "pytest",
    "-x",
    "-q",
    "-p",
    "no:cacheprovider",
    "--hypothesis-seed=0",
    "--hypothesis-profile=mutation",  # tests/conftest.py: no shrinking
]


def _pyc_files(path: Path):
    cache = path.parent / "__pycache__"
    return list(cache.glob(f"{path.stem}.*.pyc")) if cache.is_dir() else []


def _drop_bytecode(path: Path):
    for pyc in _pyc_files(path):
        pyc.unlink(missing_ok=True)


def _test_env(out: Path):
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # examples Hypothesis finds failing under a mutant stay with the campaign, not the project
    env["HYPOTHESIS_STORAGE_DIRECTORY"] = str(out / "hypothesis")
    return env


def _baseline(tests, timeout, out):
    """Run the tests on the unmutated code; the node ids that fail."""
    cmd = [*(a for a in PYTEST if a != "-x"), "-rf", *tests]  # every failure, not the first
    start = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=_test_env(out),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    seconds = time.monotonic() - start
    failed = [
        line.split()[1]
        for line in proc.stdout.splitlines()
        if line.startswith("FAILED ") and len(line.split()) > 1
    ]
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not failed):
        sys.exit(f"the tests do not run on the unmutated code:\n{proc.stdout}\n{proc.stderr}")
    return failed, seconds


def _config_text(module: Path, test_command: str, timeout: float, operators: str | None):
    excluded = list(EXCLUDED_OPERATORS)
    if operators:
        # keep only operators matching `operators`: exclude everything else
        excluded.append(rf"(?!{operators})")
    lines = [
        "[cosmic-ray]",
        f"module-path = {json.dumps(str(module))}",
        f"timeout = {float(timeout)}",
        "excluded-modules = []",
        f"test-command = {json.dumps(test_command)}",
        "",
        "[cosmic-ray.distributor]",
        'name = "local"',
        "",
        "[cosmic-ray.filters.operators-filter]",
        "exclude-operators = [" + ", ".join(json.dumps(e) for e in excluded) + "]",
        "",
    ]
    return "\n".join(lines)


def _tool(name):
    """A console script installed beside this Python (cosmic-ray, cr-filter-operators)."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        sys.exit(f"{name} not found: pip install -e '.[mutation]'")
    return found


def _exec(config, session, time_limit, out):
    """cosmic-ray exec, interrupted (SIGINT, so that it restores the file) at the time limit.
    Returns True if it finished."""
    proc = subprocess.Popen(
        [_tool("cosmic-ray"), "exec", str(config), str(session)],
        cwd=ROOT,
        env=_test_env(out),
        start_new_session=True,  # its own process group, to interrupt it as a whole
    )
    try:
        proc.wait(timeout=time_limit)
        return True
    except subprocess.TimeoutExpired:
        print(f"\ntime limit of {time_limit:.0f} s reached: stopping", file=sys.stderr)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return False
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait()
        raise


NOT_SAMPLED = "not in the sample"


def _sample(session, size, seed):
    """Keep `size` of the pending mutants, drawn uniformly (reproducibly: from `seed`, over the
    mutants in file order); mark the rest skipped as not sampled. How many were left out."""
    with sqlite3.connect(session) as db:
        pending = db.execute(
            "SELECT s.job_id FROM mutation_specs s LEFT JOIN work_results r USING (job_id)"
            " WHERE r.job_id IS NULL ORDER BY s.start_pos_row, s.start_pos_col,"
            " s.operator_name, s.occurrence, s.operator_args"
        ).fetchall()
        chosen = set(random.Random(seed).sample(range(len(pending)), min(size, len(pending))))
        left_out = [(NOT_SAMPLED, job) for i, (job,) in enumerate(pending) if i not in chosen]
        db.executemany(
            "INSERT INTO work_results (worker_outcome, output, job_id) VALUES ('SKIPPED', ?, ?)",
            left_out,
        )
        return len(left_out)


def _forget_survivors(session):
    """Make the survivors of an earlier run of the session pending again; how many. Mutants
    the tests killed stay killed as long as tests are only added."""
    with sqlite3.connect(session) as db:
        cursor = db.execute("DELETE FROM work_results WHERE lower(test_outcome) = 'survived'")
        return cursor.rowcount


def _results(session):
    out = subprocess.run(
        [_tool("cosmic-ray"), "dump", str(session)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _classify(result):
    if result is None:
        return "not run"
    worker = result.get("worker_outcome")
    if worker == "skipped":
        return "not sampled" if result.get("output") == NOT_SAMPLED else "skipped"
    if worker == "no-test":
        return "no mutation"
    test = result.get("test_outcome")
    if test == "killed":
        return "timeout" if (result.get("output") or "").strip() == "timeout" else "killed"
    if test == "survived":
        return "survived"
    return "incompetent"


def _report(module, tests, deselected, rows, finished, elapsed):
    counts = Counter(_classify(r) for _, r in rows)
    killed = counts["killed"] + counts["timeout"]
    survived = counts["survived"]
    tried = killed + survived
    score = f"{100.0 * killed / tried:.1f}%" if tried else "n/a"
    lines = [
        f"# Mutation testing: {module}",
        "",
        f"- tests: {shlex.join(tests)}",
        f"- score: **{score}** killed ({killed} of {tried} mutants run to a verdict)",
        "- "
        + ", ".join(
            f"{k}: {counts[k]}"
            for k in (
                "killed",
                "timeout",
                "survived",
                "incompetent",
                "skipped",
                "not sampled",
                "no mutation",
                "not run",
            )
        ),
        f"- campaign {'finished' if finished else 'stopped at the time limit'} after {elapsed:.0f} s",
    ]
    if deselected:
        lines += ["", "Tests that fail on the unmutated code, deselected for the campaign:"]
        lines += [f"- {t}" for t in deselected]
    survivors = [(item, r) for item, r in rows if _classify(r) == "survived"]
    lines += ["", f"## Survivors ({len(survivors)})"]
    for item, result in sorted(
        survivors, key=lambda ir: tuple(ir[0]["mutations"][0].get("start_pos") or (0, 0))
    ):
        mutation = item["mutations"][0]
        line = (mutation.get("start_pos") or ["?"])[0]
        lines += [
            "",
            f"### line {line}: {mutation['operator_name']} (occurrence {mutation['occurrence']})",
            "",
            "```diff",
            (result.get("diff") or "").rstrip(),
            "```",
        ]
    incompetent = [(item, r) for item, r in rows if _classify(r) == "incompetent"]
    if incompetent:
        lines += ["", f"## Incompetent ({len(incompetent)}): the mutant could not be tested"]
        for item, _result in incompetent:
            mutation = item["mutations"][0]
            lines.append(
                f"- line {(mutation.get('start_pos') or ['?'])[0]}: {mutation['operator_name']}"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("file", nargs="?", help="the engine file to mutate, e.g. engine/tape.py")
    parser.add_argument("--list", action="store_true", help="print the file -> tests mapping")
    parser.add_argument("--tests", nargs="+", help="test files to run instead of the mapped ones")
    parser.add_argument(
        "-k",
        "--keyword",
        help="only the tests matching this pytest -k expression (a faster run per mutant)",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per test run (default: 5x baseline)"
    )
    parser.add_argument(
        "--time-limit", type=float, default=1800.0, help="seconds for the whole campaign"
    )
    parser.add_argument("--operators", help="only operators whose name matches this regex")
    parser.add_argument(
        "--out", help="directory for the session and the report (default: a new temp dir)"
    )
    parser.add_argument(
        "--rerun-survivors",
        action="store_true",
        help="with the --out of a finished run: run its survivors again (after adding tests)",
    )
    parser.add_argument(
        "--sample",
        type=int,
        help="run only this many of the file's mutants, drawn uniformly at random (a first run)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the seed of --sample's draw")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the test runs")
    parser.add_argument(
        "--strict-baseline",
        action="store_true",
        help="stop if a test fails on the unmutated code (default: deselect it and say so)",
    )
    args = parser.parse_args(argv)

    if args.list:
        for file, tests in TESTS.items():
            print(f"{file}: {' '.join(tests)}")
        return 0
    if not args.file:
        parser.error("give a file to mutate (or --list)")
    module = Path(args.file)
    relative = module.resolve().relative_to(ROOT) if module.is_absolute() else module
    key = relative.as_posix()
    tests = args.tests or TESTS.get(key)
    if not tests:
        parser.error(f"no tests mapped for {key}: pass --tests (mapped: {', '.join(TESTS)})")
    if args.keyword:
        tests = [*tests, "-k", args.keyword]
    path = ROOT / relative
    if not path.is_file():
        parser.error(f"{path} does not exist")

    # started in the background by a shell, SIGINT is ignored, and an ignored signal stays
    # ignored in children: the time limit could not interrupt cosmic-ray
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.nice:
        os.nice(args.nice)  # inherited by the baseline and by every test run
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gradserve-mutate-"))
    out.mkdir(parents=True, exist_ok=True)
    session = out / "session.sqlite"
    config = out / "config.toml"
    original = path.read_bytes()
    (out / "original.py").write_bytes(original)

    start = time.monotonic()
    finished = False
    try:
        _drop_bytecode(path)
        print(f"baseline: {' '.join(tests)}", file=sys.stderr)
        failing, seconds = _baseline(tests, max(args.time_limit, 60), out)
        if failing and args.strict_baseline:
            sys.exit("tests fail on the unmutated code:\n" + "\n".join(failing))
        for t in failing:
            print(f"  fails unmutated, deselected: {t}", file=sys.stderr)
        timeout = args.timeout or max(10.0, 5 * seconds)
        command = shlex.join(PYTEST + [f"--deselect={t}" for t in failing] + tests)
        config.write_text(_config_text(relative, command, timeout, args.operators))
        if not session.exists():
            subprocess.run(
                [_tool("cosmic-ray"), "init", str(config), str(session)], cwd=ROOT, check=True
            )
            subprocess.run(
                [_tool("cr-filter-operators"), str(session), str(config)], cwd=ROOT, check=True
            )
            if args.sample is not None:
                left_out = _sample(session, args.sample, args.seed)
                print(f"sampled {args.sample}, {left_out} left out", file=sys.stderr)
        elif args.rerun_survivors:
            print(f"{_forget_survivors(session)} survivors to run again", file=sys.stderr)
        pending = sum(1 for _, r in _results(session) if r is None)
        print(
            f"{pending} mutants to run (test timeout {timeout:.0f} s, baseline {seconds:.1f} s)",
            file=sys.stderr,
        )
        remaining = args.time_limit - (time.monotonic() - start)
        finished = _exec(config, session, max(remaining, 1.0), out)
    finally:
        if path.read_bytes() != original:
            path.write_bytes(original)
            print(f"restored {key} from the copy taken before the run", file=sys.stderr)
        _drop_bytecode(path)

    rows = _results(session)
    report = _report(key, tests, failing, rows, finished, time.monotonic() - start)
    (out / "report.md").write_text(report)
    print(report)
    print(f"report: {out / 'report.md'}  session: {session}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
