"""Starting and stopping the gRPC server: `serve(Config(...))` or `gradserve serve`."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field, fields

import grpc
from gradserve.engine import Engine, Limits
from gradserve.engine.limits import DEFAULT_LIMITS
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from gradserve.protocol import SERVICE_NAME

from . import reflection
from .admission import default_max_concurrent, default_request_memory
from .auth import ServerTls, TokenInterceptor, Tokens
from .servicer import Servicer
from .shm import SERVICE as _SHM
from .shm import SharedMemoryRegistry

log = logging.getLogger("gradserve.server")

MiB = 1 << 20
_FOREVER_MS = 2**31 - 1
SHARED_MEMORY_SERVICE = _SHM.full_name
UNBOUNDED_CALLS = 1024  # --max-concurrent-rpcs none


def format_size(nbytes: int) -> str:
    """256 MiB, 1 GiB, 1.5 KiB, 100 B: how sizes are shown (`gradserve serve --help`, logs)."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.4g} {unit}"
    return f"{nbytes} B"


def _address(host: str, port: int) -> str:
    return f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"


def _why_not_bound(host: str, port: int) -> str:
    """Why gRPC could not listen on host:port (it does not say): bind a socket there as it
    does (SO_REUSEADDR) and report the error, e.g. 'address already in use'."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    return "gRPC could not bind it"


def tune_malloc():
    """Keep freed memory in the process (glibc): requests allocate and free megabyte arrays
    (arguments, results, their wire copies) every call, and with glibc's defaults each such
    buffer is returned to the OS and page-faulted back in on the next call. Big blocks (up to
    32 MiB) come from the heap, and up to 512 MiB of free heap is kept. No-op elsewhere."""
    if os.environ.get("GRADSERVE_MALLOC_TUNING", "1") == "0":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * MiB)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, 512 * MiB)
        )
    except (OSError, AttributeError):
        return False


def default_workers() -> int:
    return max(4, 2 * (os.cpu_count() or 2))


@dataclass
class Config:
    """Server settings; each is the flag --NAME (dashes) and the env var GRADSERVE_NAME."""

    host: str = "0.0.0.0"
    port: int = 50051
    metrics_port: int = 9464
    workers: int = 0  # 0: max(4, 2 x CPUs)
    max_tape_bytes: int | None = None  # None: unbounded
    max_nodes: int = DEFAULT_LIMITS.max_nodes
    max_elements: int = DEFAULT_LIMITS.max_elements
    max_message_bytes: int = 256 * MiB
    cache_bytes: int = 1024 * MiB
    grace_seconds: float = 10.0
    shutdown_delay_seconds: float = 1.0
    max_connection_age_seconds: float = 300.0  # 0: unlimited
    tls_cert: str = ""  # PEM files; both or neither
    tls_key: str = ""
    tls_client_ca: str = ""  # mutual TLS: client certificates signed by these CAs required
    auth_token_file: str = ""  # bearer tokens, one a line; "" : no token needed
    metrics_host: str = ""  # "": the same as host
    max_concurrent_rpcs: int | None = 0  # 0: 4 x workers; None: UNBOUNDED_CALLS
    # None: unbounded; the default is half the memory the process may use
    max_request_memory: int | None = field(default_factory=default_request_memory)
    max_shared_memory_bytes: int = 1024 * MiB  # 0: no shared memory
    max_shared_memory_bytes_per_client: int = 256 * MiB
    shared_memory_lease_seconds: float = 30.0

    def replace(self, **changes) -> Config:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Config(**values)


class Running:
    """A started server: its ports, reload() and stop()."""

    def __init__(
        self,
        config,
        server,
        servicer,
        health_servicer,
        metrics_http,
        port,
        metrics_port,
        pools=(),
        tokens=None,
        tls=None,
    ):
        self.config = config
        self.tokens = tokens
        self.tls = tls
        self._pools = pools  # thread pools to shut down with the server
        self.servicer = servicer
        self.server = server
        self.health = health_servicer
        self._metrics_http = metrics_http
        self.port = port
        self.metrics_port = metrics_port
        self._stopped = threading.Event()

    def reload(self):
        """Read --auth-token-file and the TLS files again (what SIGHUP does); a file that
        cannot be read leaves what was in force."""
        if self.tokens is not None:
            self.tokens.load()
        if self.tls is not None:
            self.tls.reload()

    def stop(self, grace: float | None = None):
        """Stop accepting calls (health NOT_SERVING), let in-flight calls finish within the
        grace period (then cancel them), stop the metrics server."""
        grace = self.config.grace_seconds if grace is None else grace
        self.health.enter_graceful_shutdown()
        # Health says NOT_SERVING while calls are still accepted, so that load balancers and
        # probes that check now stop sending here before the listener closes.
        time.sleep(max(0.0, min(self.config.shutdown_delay_seconds, grace)))
        log.info("shutting down: draining in-flight calls (grace %.1fs)", grace)
        done = self.server.stop(grace)  # new calls are refused from now on
        # Wait for the Gradients calls in flight, then end the rest at once: open health
        # Watch streams (load balancers, probes) would otherwise hold the whole grace period.
        deadline = time.monotonic() + grace
        while self.servicer.inflight and time.monotonic() < deadline and not done.is_set():
            time.sleep(0.02)
        self.server.stop(None).wait()
        done.wait()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        for pool in self._pools:
            pool.shutdown(wait=False)
        self._stopped.set()
        log.info("stopped")

    def wait(self, timeout=None) -> bool:
        return self._stopped.wait(timeout)


def start(config: Config) -> Running:
    workers = config.workers or default_workers()
    tune_malloc()
    engine = Engine(
        max_tape_bytes=config.max_tape_bytes,
        limits=Limits(max_nodes=config.max_nodes, max_elements=config.max_elements),
    )
    tls = (
        ServerTls(config.tls_cert, config.tls_key, config.tls_client_ca)
        if (config.tls_cert or config.tls_key)
        else None
    )
    if config.tls_client_ca and tls is None:
        raise OSError("--tls-client-ca needs --tls-cert and --tls-key")
    tokens = Tokens(config.auth_token_file) if config.auth_token_file else None
    if tokens is not None and tls is None:
        log.warning("bearer tokens over plaintext: use --tls-cert and --tls-key off loopback")
    limit = config.max_concurrent_rpcs
    limit = default_max_concurrent(workers) if limit == 0 else limit
    if limit is None:
        # "unbounded": every call waiting for a slot holds a thread of the pool that health
        # checks share, so a pool is still needed; a large one keeps the queue as good as open
        limit = UNBOUNDED_CALLS
    shared_memory = SharedMemoryRegistry(
        config.max_shared_memory_bytes,
        config.max_shared_memory_bytes_per_client,
        config.shared_memory_lease_seconds,
    )
    servicer = Servicer(
        engine, config.cache_bytes, workers, limit, config.max_request_memory, shared_memory
    )
    # More threads than the calls admitted: health checks, reflection and the refusal of calls
    # over --max-concurrent-rpcs answer while every admitted call holds a thread (computing, or
    # waiting on the servicer's semaphore of `workers` compute slots).
    executor = futures.ThreadPoolExecutor(
        max_workers=max(workers, limit or 0) + 4, thread_name_prefix="gradserve"
    )
    options = [
        # gRPC's channel arguments are 32-bit
        ("grpc.max_receive_message_length", min(int(config.max_message_bytes), _FOREVER_MS)),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0),
    ]
    if config.max_connection_age_seconds > 0:
        # GOAWAY after this age (gRPC adds +-10% jitter): clients reconnect, re-resolving DNS,
        # and so reach replicas added since. Calls in flight on an aged connection finish.
        options += [
            (
                "grpc.max_connection_age_ms",
                min(max(1, int(config.max_connection_age_seconds * 1e3)), _FOREVER_MS),
            ),
            ("grpc.max_connection_age_grace_ms", _FOREVER_MS),
        ]
    server = grpc.server(
        executor,
        options=options,
        interceptors=() if tokens is None else (TokenInterceptor(tokens),),
    )
    server.add_generic_rpc_handlers((servicer.handler(), shared_memory.handler()))
    health_pool = futures.ThreadPoolExecutor(max_workers=1)
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True, experimental_thread_pool=health_pool
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable(server, (SERVICE_NAME, SHARED_MEMORY_SERVICE, health.SERVICE_NAME))
    address = _address(config.host, config.port)
    pools = (executor, health_pool, servicer.hasher, shared_memory)  # shut down with the server
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, tls.credentials)
    except RuntimeError:
        port = 0
    if not port:
        _close(server, pools)
        raise OSError(
            f"cannot listen on {address} (--port): {_why_not_bound(config.host, config.port)}"
        )
    metrics_http = None
    metrics_port = 0
    if config.metrics_port >= 0:
        host = config.metrics_host or config.host
        metrics_host = "0.0.0.0" if host in ("[::]", "::") else host.strip("[]")
        try:
            metrics_http, _ = start_http_server(config.metrics_port, addr=metrics_host)
        except OSError as exc:
            _close(server, pools)
            where = _address(metrics_host, config.metrics_port)
            reason = (exc.strerror or str(exc)).lower()
            raise OSError(f"cannot listen on {where} (--metrics-port): {reason}") from None
        metrics_port = metrics_http.server_address[1]
    server.start()
    shared_memory.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Running(
        config,
        server,
        servicer,
        health_servicer,
        metrics_http,
        port,
        metrics_port,
        pools=pools,
        tokens=tokens,
        tls=tls,
    )


def _close(server, pools):
    # A server that never started keeps its listening socket through stop(): start it first.
    server.start()
    server.stop(None).wait()
    for pool in pools:
        pool.shutdown(wait=False)


def serve(config: Config | None = None, *, block: bool = True, **overrides):
    """Start the server. With block=True (the CLI) wait until SIGTERM/SIGINT, drain, return 0;
    with block=False return the Running server at once."""
    config = (config or Config()).replace(**overrides) if overrides else (config or Config())
    running = start(config)
    metrics = (
        f", metrics http://{config.metrics_host or config.host}:{running.metrics_port}/metrics"
        if running.metrics_port
        else ""
    )
    tape = "unbounded" if config.max_tape_bytes is None else format_size(config.max_tape_bytes)
    log.info(
        "gradserve serving on %s%s (workers %d, max message %s, cache %s, max tape %s, "
        "max nodes %d, max elements %d, max concurrent calls %s, max request memory %s, %s, %s)",
        _address(config.host, running.port),
        metrics,
        config.workers or default_workers(),
        format_size(config.max_message_bytes),
        format_size(config.cache_bytes),
        tape,
        config.max_nodes,
        config.max_elements,
        running.servicer.admission.max_concurrent or "unbounded",
        "unbounded"
        if config.max_request_memory is None
        else format_size(config.max_request_memory),
        ("mutual TLS" if config.tls_client_ca else "TLS") if running.tls else "plaintext",
        "bearer tokens" if running.tokens else "no tokens",
    )
    if not block:
        return running
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    reload = threading.Event()

    def on_hup(signum, frame):
        reload.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, on_hup)
    while not stop.wait(0.2):
        if reload.is_set():
            reload.clear()
            log.info("received SIGHUP: reloading the token and TLS files")
            running.reload()
    running.stop()
    sys.stdout.flush()
    return 0
