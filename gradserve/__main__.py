"""The `gradserve` command.

    gradserve serve [--host H] [--port P] [--metrics-port M] [...]   run the server
    gradserve health --target HOST:PORT [--timeout S]               gRPC health check
    gradserve --version

Every `serve` flag can also be set by the environment variable GRADSERVE_<FLAG> (upper case,
dashes as underscores: --max-tape-bytes -> GRADSERVE_MAX_TAPE_BYTES); a flag given on the
command line wins. Sizes take an optional suffix: 256MiB, 1GiB, 64KiB, 500MB, 2G.

A value is checked by its option's type function (port_number, positive_int, parse_size, ...):
out of range it is a one-line usage error naming the flag or the variable, exit status 2.
`gradserve health` imports grpc and the health stubs only (no NumPy, no engine): Docker runs
it every few seconds."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*\Z", re.IGNORECASE)
_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)\s*\Z")


class InvalidValue(argparse.ArgumentTypeError):
    """A value its option does not accept. Shown as `--port: 70000 is not a port (0-65535)`
    for a flag and `GRADSERVE_PORT=70000: not a port (0-65535)` for a variable."""

    def __init__(self, text, expected: str):
        self.expected = expected
        shown = str(text) if _NUMBER.match(str(text)) else repr(str(text))
        super().__init__(f"{shown} is {expected}")


# ---- type functions: parse one option's text, or raise InvalidValue --------------------------


def _integer(text, low: int, high: int | None, expected: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise InvalidValue(text, expected) from None
    if value < low or (high is not None and value > high):
        raise InvalidValue(text, expected)
    return value


def port_number(text) -> int:
    return _integer(text, 0, 65535, "not a port (0-65535)")


def port_or_off(text) -> int:
    return _integer(text, -1, 65535, "not a port (0-65535, -1: off)")


def non_negative_int(text) -> int:
    return _integer(text, 0, None, "not an integer >= 0")


def positive_int(text) -> int:
    return _integer(text, 1, None, "not an integer >= 1")


def _seconds(text, expected: str, positive: bool) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise InvalidValue(text, expected) from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise InvalidValue(text, expected)
    return value


def non_negative_seconds(text) -> float:
    return _seconds(text, "not a number of seconds >= 0", positive=False)


def positive_seconds(text) -> float:
    return _seconds(text, "not a number of seconds > 0", positive=True)


def choice(*names: str):
    """A type function accepting one of `names`, case-insensitively; returns it as written."""
    by_key = {name.upper(): name for name in names}

    def parse(text) -> str:
        try:
            return by_key[str(text).strip().upper()]
        except KeyError:
            raise InvalidValue(text, "not one of " + ", ".join(names)) from None

    parse.__name__ = "choice"
    return parse


def parse_size(text) -> int:
    match = _SIZE.match(str(text))
    if not match:
        raise InvalidValue(text, "not a size (e.g. 268435456, 256MiB, 1GiB)")
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


log_level = choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# (flag, type, help); defaults come from server.Config.
_SERVE_OPTIONS = [
    ("host", str, "address to listen on (gRPC and metrics)"),
    ("port", port_number, "gRPC port (0: pick a free one)"),
    (
        "metrics-port",
        port_or_off,
        "Prometheus /metrics HTTP port (0: pick a free one; -1: disabled)",
    ),
    (
        "workers",
        non_negative_int,
        "computations run at once (0: max(4, 2 x CPUs)); further calls queue",
    ),
    (
        "max-tape-bytes",
        parse_optional_size,
        "bound on the tape (residuals) one call may hold; loops recompute (checkpoint) to fit, a "
        "call that cannot fit fails with RESOURCE_EXHAUSTED (none/0: unbounded)",
    ),
    (
        "max-nodes",
        positive_int,
        "nodes in one graph, subgraphs included (beyond: RESOURCE_EXHAUSTED)",
    ),
    (
        "max-elements",
        positive_int,
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
        non_negative_seconds,
        "on SIGTERM/SIGINT: time in-flight calls get to finish before they are cancelled",
    ),
    (
        "shutdown-delay-seconds",
        non_negative_seconds,
        "on SIGTERM/SIGINT: time health answers NOT_SERVING while "
        "calls are still accepted, before the drain starts",
    ),
    (
        "max-connection-age-seconds",
        non_negative_seconds,
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
        "none: 1024); beyond, a call is refused at once with RESOURCE_EXHAUSTED and a "
        "retry delay (health checks are not counted)",
    ),
    (
        "max-request-memory",
        parse_optional_size,
        "bound on the memory one call may take (arguments, working arrays, results), "
        "estimated before it runs; beyond: RESOURCE_EXHAUSTED (none/0: unbounded; default: "
        "half the memory of the machine or cgroup)",
    ),
    (
        "max-shared-memory-bytes",
        parse_size,
        "bound on the shared-memory regions of same-host clients mapped at once, all clients "
        "together (0: no shared memory; clients send bytes)",
    ),
    (
        "max-shared-memory-bytes-per-client",
        parse_size,
        "bound on the shared-memory regions one client may register",
    ),
    (
        "shared-memory-lease-seconds",
        positive_seconds,
        "a client's shared-memory regions are unmapped after this long without a call",
    ),
]
# Options of `serve` that are not server.Config fields: (flag, type, help, default).
_LOGGING_OPTIONS = [
    ("log-level", log_level, "logging level (one line per failed call at WARNING)", "INFO"),
]

# Exit status of `gradserve health` (2 is a usage error, as for every command).
HEALTH_EXIT = {"SERVING": 0, "NOT_SERVING": 1, "UNREACHABLE": 3, "TIMEOUT": 4}


def _env_name(flag):
    return "GRADSERVE_" + flag.upper().replace("-", "_")


_FROM_ENV_OR_CONFIG = object()  # an option's value until the command line or a default sets it


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`gradserve serve: error: --port: ...`, exit 2) and
    settings (add_setting): options whose value, when the command line leaves them out, is the
    environment variable GRADSERVE_<FLAG> or else `defaults()[dest]`. A variable is read only
    when its flag is absent, and `defaults` is called only when a value or the help needs it
    (it imports the server; `gradserve health` never calls it)."""

    def __init__(self, *args, defaults=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._defaults_of = defaults
        self._setting_defaults = None
        self._settings = {}  # dest -> (action, env, help text)

    def add_setting(self, flag: str, kind, text: str):
        env = _env_name(flag)
        action = self.add_argument(
            f"--{flag}",
            type=kind,
            default=_FROM_ENV_OR_CONFIG,
            metavar=flag.replace("-", "_").upper(),
        )
        self._settings[action.dest] = (action, env, text)

    def _setting_default(self, dest):
        if self._setting_defaults is None:
            self._setting_defaults = self._defaults_of() if self._defaults_of else {}
        return self._setting_defaults[dest]

    def _from_env(self, action, env):
        try:
            return action.type(os.environ[env])
        except (argparse.ArgumentTypeError, ValueError) as exc:
            self.error(f"{env}={os.environ[env]}: {getattr(exc, 'expected', exc)}")

    def parse_known_args(self, args=None, namespace=None):
        namespace, rest = super().parse_known_args(args, namespace)
        for dest, (action, env, _) in self._settings.items():
            if getattr(namespace, dest, None) is _FROM_ENV_OR_CONFIG:
                value = (
                    self._from_env(action, env)
                    if env in os.environ
                    else self._setting_default(dest)
                )
                setattr(namespace, dest, value)
        return namespace, rest

    def format_help(self):
        for dest, (action, env, text) in self._settings.items():
            default = self._setting_default(dest)
            if env in os.environ:
                with contextlib.suppress(argparse.ArgumentTypeError, ValueError):
                    default = action.type(os.environ[env])
            shown = _show(default, action.type)
            action.help = f"{text} [env {env}] (default: {shown})".replace("%", "%%")
        return super().format_help()

    def error(self, message):
        message = message.removeprefix("argument ")
        self.exit(2, f"{self.prog}: error: {message}\n")


def _show(value, kind) -> str:
    if value is None:
        return "none"
    if kind in (parse_size, parse_optional_size):
        from gradserve.server.server import format_size

        return format_size(value)
    return str(value)


def _serve_defaults() -> dict:
    from dataclasses import asdict

    from gradserve.server.server import Config  # no grpc server started

    return {
        **asdict(Config()),
        **{flag.replace("-", "_"): default for flag, _, _, default in _LOGGING_OPTIONS},
    }


class _Version(argparse.Action):
    """--version: `gradserve X.Y.Z` (importlib.metadata, read only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from gradserve import __version__

        print(f"gradserve {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gradserve",
        description="gradserve: values and derivatives of serialized computation graphs over gRPC.",
        epilog="`gradserve` alone prints this help and exits 2. Run `gradserve COMMAND --help` "
        "for a command's flags.",
    )
    parser.add_argument("--version", action=_Version, help="print `gradserve X.Y.Z` and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="run the gRPC server (health, reflection, Prometheus metrics)",
        description="Run the gradserve gRPC server: the gradserve.v1.Gradients service, the "
        "standard grpc.health.v1 health service and server reflection, with Prometheus metrics "
        "at http://HOST:METRICS_PORT/metrics. Each flag may instead be set by the environment "
        "variable shown; the flag wins. SIGTERM stops accepting calls, drains in-flight calls "
        "within --grace-seconds and exits 0. A bad flag or variable exits 2; a port that cannot "
        "be listened on (busy), 1.",
        defaults=_serve_defaults,
    )
    for flag, kind, text in _SERVE_OPTIONS:
        serve.add_setting(flag, kind, text)
    for flag, kind, text, _ in _LOGGING_OPTIONS:
        serve.add_setting(flag, kind, text)
    health = commands.add_parser(
        "health",
        help="check a server with the standard gRPC health check",
        description="Call grpc.health.v1.Health/Check on TARGET and print the answer. Exit "
        "status: 0 SERVING; 1 the server answered but is not serving (NOT_SERVING, "
        "SERVICE_UNKNOWN, another error); 2 bad usage; 3 unreachable (nothing listens, the name "
        "does not resolve: fails at once, without waiting for --timeout); 4 no answer within "
        "--timeout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    health.add_argument(
        "--target",
        default=os.environ.get("GRADSERVE_TARGET", "localhost:50051"),
        help="HOST:PORT of the server [env GRADSERVE_TARGET]",
    )
    health.add_argument(
        "--timeout", type=positive_seconds, default=3.0, help="seconds to wait for the answer"
    )
    health.add_argument(
        "--service", default="", help="service name to check ('' = the whole server)"
    )
    for flag, text in _HEALTH_TLS_OPTIONS:
        env = "GRADSERVE_HEALTH_" + flag.upper().replace("-", "_")
        health.add_argument(
            f"--{flag}", default=os.environ.get(env, ""), help=f"{text} [env {env}]"
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


# `gradserve health` against a server that serves TLS (--tls-cert): (flag, help).
_HEALTH_TLS_OPTIONS = [
    ("tls-ca", "PEM root certificates to verify the server with: connect over TLS"),
    ("tls-cert", "PEM client certificate chain, for a server that requires one (mutual TLS)"),
    ("tls-key", "PEM private key of --tls-cert"),
    ("tls-server-name", "the name the server's certificate carries, when TARGET is an address"),
]


def _health_channel(target: str, tls_ca="", tls_cert="", tls_key="", tls_server_name=""):
    import grpc

    if not (tls_ca or tls_cert or tls_key):
        return grpc.insecure_channel(target)
    from pathlib import Path

    pem = [Path(path).read_bytes() if path else None for path in (tls_ca, tls_key, tls_cert)]
    options = [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else []
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(*pem), options=options)


def check_health(target: str, timeout: float = 3.0, service: str = "", **tls) -> tuple[int, str]:
    """(exit status, line to print) of `gradserve health`: see HEALTH_EXIT. A call that cannot
    connect fails at once (no wait_for_ready); one that connects but gets no answer, after
    `timeout` seconds. `tls`: the _HEALTH_TLS_OPTIONS (file paths), to check a TLS server."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with _health_channel(target, **tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            code = err.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                return HEALTH_EXIT[
                    "UNREACHABLE"
                ], f"UNAVAILABLE: cannot reach {target}: {err.details()}"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return HEALTH_EXIT["TIMEOUT"], (
                    f"DEADLINE_EXCEEDED: no answer from {target} within {timeout:g} s"
                )
            if code == grpc.StatusCode.NOT_FOUND:
                return HEALTH_EXIT["NOT_SERVING"], f"SERVICE_UNKNOWN: {service!r} on {target}"
            return HEALTH_EXIT["NOT_SERVING"], f"{code.name}: {err.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return HEALTH_EXIT["SERVING" if status == "SERVING" else "NOT_SERVING"], status


def health_check(target: str, timeout: float = 3.0, service: str = "") -> str:
    """The status name ("SERVING", "NOT_SERVING", ...) or a description of the failure."""
    return check_health(target, timeout, service)[1]


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "explain":
        return run_explain(args)
    if args.command == "health":
        tls = {
            f.replace("-", "_"): getattr(args, f.replace("-", "_")) for f, _ in _HEALTH_TLS_OPTIONS
        }
        if bool(tls["tls_cert"]) != bool(tls["tls_key"]):
            parser.error("health: --tls-cert and --tls-key go together")
        if tls["tls_server_name"] and not (tls["tls_ca"] or tls["tls_cert"]):
            parser.error("health: --tls-server-name needs --tls-ca (TLS)")
        try:
            status, line = check_health(args.target, args.timeout, args.service, **tls)
        except OSError as exc:
            print(f"gradserve health: {exc}", file=sys.stderr)
            return 2
        print(line)
        return status
    import logging

    logging.basicConfig(
        level=args.log_level,
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
    except OSError as exc:  # a port that cannot be listened on
        print(f"gradserve serve: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
