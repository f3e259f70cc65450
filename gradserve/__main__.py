"""The `gradserve` command.

    gradserve serve [--host H] [--port P] [--metrics-port M] [...]   run the server
    gradserve health --target HOST:PORT [--timeout S]               gRPC health check

Every `serve` flag can also be set by the environment variable GRADSERVE_<FLAG> (upper case,
dashes as underscores: --max-tape-bytes -> GRADSERVE_MAX_TAPE_BYTES); a flag given on the
command line wins. Sizes take an optional suffix: 256MiB, 1GiB, 64KiB, 500MB, 2G."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*\Z", re.IGNORECASE)


def parse_size(text) -> int:
    match = _SIZE.match(str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 268435456, 256MiB, 1GiB)")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    power = " kmgt".index(unit.lower()) if unit else 0
    return int(float(number) * base**power)


def parse_optional_size(text):
    return None if str(text).strip().lower() in ("", "none", "0", "unlimited") else parse_size(text)


def parse_optional_count(text):
    """A count (0 or more), or none/unbounded (None)."""
    if str(text).strip().lower() in ("none", "unbounded", "unlimited"):
        return None
    if not str(text).strip().isdigit():
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (a number >= 0, or none)")
    return int(text)


# (flag, type, help); defaults come from server.Config.
_SERVE_OPTIONS = [
    ("host", str, "address to listen on (gRPC and metrics)"),
    ("port", int, "gRPC port (0: pick a free one)"),
    ("metrics-port", int, "Prometheus /metrics HTTP port (0: pick a free one; -1: disabled)"),
    ("workers", int, "computations run at once (0: max(4, 2 x CPUs)); further calls queue"),
    (
        "max-tape-bytes",
        parse_optional_size,
        "bound on the tape (residuals) one call may hold; loops recompute (checkpoint) to fit, a "
        "call that cannot fit fails with RESOURCE_EXHAUSTED (none/0: unbounded)",
    ),
    ("max-nodes", int, "nodes in one graph, subgraphs included (beyond: RESOURCE_EXHAUSTED)"),
    (
        "max-elements",
        int,
        "elements of any one array in a graph or request (beyond: RESOURCE_EXHAUSTED)",
    ),
    ("max-message-bytes", parse_size, "largest request accepted (beyond: RESOURCE_EXHAUSTED)"),
    (
        "cache-bytes",
        parse_size,
        "bound of the LRU cache of graphs and large tensors by digest, shared by all clients",
    ),
    (
        "grace-seconds",
        float,
        "on SIGTERM/SIGINT: time in-flight calls get to finish before they are cancelled",
    ),
    (
        "shutdown-delay-seconds",
        float,
        "on SIGTERM/SIGINT: time health answers NOT_SERVING while "
        "calls are still accepted, before the drain starts",
    ),
    (
        "max-connection-age-seconds",
        float,
        "close (GOAWAY) each connection after this age, so that clients reconnect and reach "
        "replicas added since; calls in flight finish (0: unlimited)",
    ),
    ("tls-cert", str, "PEM certificate chain file: serve TLS (with --tls-key)"),
    ("tls-key", str, "PEM private key file of --tls-cert"),
    (
        "tls-client-ca",
        str,
        "PEM CA file: require client certificates signed by it (mutual TLS)",
    ),
    (
        "auth-token-file",
        str,
        "file of bearer tokens, one a line ('#' comments): every call but health needs "
        "'authorization: Bearer TOKEN'; reread on SIGHUP",
    ),
    ("metrics-host", str, "address for /metrics ('': the same as --host)"),
    (
        "max-concurrent-rpcs",
        parse_optional_count,
        "Gradients calls held at once, computing or queued for a worker (0: 4 x workers; "
        "none: unbounded); beyond, a call is refused at once with RESOURCE_EXHAUSTED and a "
        "retry delay (health checks are not counted)",
    ),
    (
        "max-request-memory",
        parse_optional_size,
        "bound on the memory one call may take (arguments, working arrays, results), "
        "estimated before it runs; beyond: RESOURCE_EXHAUSTED (none/0: unbounded; default: "
        "half the memory of the machine or cgroup)",
    ),
]


def _env_name(flag):
    return "GRADSERVE_" + flag.upper().replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    from gradserve.protocol import SERVICE_NAME
    from gradserve.server.server import Config  # light: no grpc server started

    defaults = Config()
    parser = argparse.ArgumentParser(
        prog="gradserve",
        description="gradserve: values and derivatives of serialized computation graphs over gRPC.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the gRPC server (health, reflection, Prometheus metrics)",
        description=f"Run the gradserve gRPC server: the {SERVICE_NAME} service, the "
        "standard grpc.health.v1 health service and server reflection, with Prometheus metrics "
        "at http://HOST:METRICS_PORT/metrics. Each flag may instead be set by the environment "
        "variable shown; the flag wins. SIGTERM stops accepting calls, drains in-flight calls "
        "within --grace-seconds and exits 0.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for flag, kind, text in _SERVE_OPTIONS:
        attr = flag.replace("-", "_")
        default = getattr(defaults, attr)
        env = _env_name(flag)
        if env in os.environ:
            try:
                default = kind(os.environ[env])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{env}={os.environ[env]!r}: {exc}")
        serve.add_argument(
            f"--{flag}",
            type=kind,
            default=default,
            metavar=attr.upper(),
            help=f"{text} [env {env}]",
        )
    serve.add_argument(
        "--log-level",
        default=os.environ.get("GRADSERVE_LOG_LEVEL", "INFO"),
        help="logging level (one line per failed call at WARNING) [env GRADSERVE_LOG_LEVEL]",
    )
    health = commands.add_parser(
        "health",
        help="check a server with the standard gRPC health check",
        description="Call grpc.health.v1.Health/Check on TARGET. Exit status 0 only when the "
        "server answers SERVING; 1 otherwise (NOT_SERVING, unreachable, timeout).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    health.add_argument(
        "--target",
        default=os.environ.get("GRADSERVE_TARGET", "localhost:50051"),
        help="HOST:PORT of the server [env GRADSERVE_TARGET]",
    )
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    health.add_argument(
        "--service", default="", help="service name to check ('' = the whole server)"
    )
    _add_explain(commands)
    return parser


def _add_explain(commands) -> None:
    explain = commands.add_parser(
        "explain",
        help="print a graph's evaluation trace with tangents or adjoints (gs.explain)",
        description="Print the evaluation trace of a graph saved with graph.to_bytes(): one "
        "row per value (inputs v_{1-n}..v_0, intermediates v_1, v_2, ..., outputs y) with its "
        "primal value and its tangent (forward mode) or adjoint (reverse mode).",
    )
    explain.add_argument("graph_file", nargs="?", metavar="GRAPH_FILE", help="the graph")
    explain.add_argument(
        "--args",
        nargs="+",
        metavar="VALUE",
        help="one value per input: a number (which fills an array input) or a JSON list",
    )
    explain.add_argument(
        "--mode",
        choices=("forward", "reverse"),
        help="forward (tangents) or reverse (adjoints); default forward, both with --example",
    )
    explain.add_argument("--wrt", help="forward mode: the input seeded, index or name (0)")
    explain.add_argument("--output", type=int, help="reverse mode: the output seeded (0)")
    explain.add_argument(
        "--example",
        action="store_true",
        help="the function ln(x1) + x1*x2 - sin(x2) at (2, 5) instead of GRAPH_FILE",
    )


def run_explain(args) -> int:
    from gradserve.engine.explain import command

    try:
        print(command(args.graph_file, args.args, args.mode, args.wrt, args.output, args.example))
    except (OSError, ValueError, TypeError) as exc:  # GraphError is a ValueError
        print(f"gradserve explain: {exc}", file=sys.stderr)
        return 2
    return 0


def health_check(target: str, timeout: float = 3.0, service: str = "") -> str:
    """The status name ("SERVING", "NOT_SERVING", ...) or a description of the failure."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=True
            )
        except grpc.RpcError as err:
            return f"{err.code().name}: {err.details()}"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "explain":
        return run_explain(args)
    if args.command == "health":
        status = health_check(args.target, args.timeout, args.service)
        print(status)
        return 0 if status == "SERVING" else 1
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from gradserve.server import Config, serve

    config = Config(
        **{
            flag.replace("-", "_"): getattr(args, flag.replace("-", "_"))
            for flag, _, _ in _SERVE_OPTIONS
        }
    )
    try:
        return serve(config)
    except OSError as exc:
        print(f"gradserve serve: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
