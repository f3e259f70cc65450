"""Bearer tokens (--auth-token-file) and TLS credentials (--tls-cert, --tls-key,
--tls-client-ca).

Every call but the standard health service's must carry ``authorization: Bearer <token>``
with one of the file's tokens, else it fails with UNAUTHENTICATED before its handler runs.
Tokens are compared in constant time with every token of the file. The file (one token a line;
blank lines and lines starting with '#' ignored) is read again by `Running.reload()` (SIGHUP).
No token is ever logged."""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading

import grpc

from gradserve.protocol import SERVICE_NAME

from . import metrics as m

log = logging.getLogger("gradserve.server")

# Open without a token: probes and load balancers check health.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_GRADIENTS = f"/{SERVICE_NAME}/"


def read_bytes(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise OSError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None


def parse_tokens(text: str) -> tuple[bytes, ...]:
    """One token a line; blank lines and '#' comments ignored; surrounding spaces stripped."""
    tokens = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            tokens.append(line.encode())
    return tuple(tokens)


class Tokens:
    """The accepted bearer tokens, from a file; `load()` reads it again."""

    def __init__(self, path: str):
        self.path = path
        self._tokens: tuple[bytes, ...] = ()
        self._digests: tuple[bytes, ...] = ()
        self._lock = threading.Lock()
        self.load(initial=True)

    def load(self, initial: bool = False) -> int:
        """Read the file; on failure keep the tokens in force (raise at start)."""
        try:
            tokens = parse_tokens(read_bytes(self.path, "--auth-token-file").decode())
        except (OSError, UnicodeDecodeError) as exc:
            if initial:
                raise OSError(str(exc)) from None
            log.error("token file not reloaded, the previous tokens stay in force: %s", exc)
            return len(self._tokens)
        with self._lock:
            self._tokens = tokens
            self._digests = tuple(hashlib.sha256(t).digest() for t in tokens)
        if not tokens:
            log.warning(
                "--auth-token-file %s holds no token: every call but health is refused", self.path
            )
        else:
            log.info("%d bearer token(s) loaded from --auth-token-file", len(tokens))
        return len(tokens)

    def valid(self, presented: bytes) -> bool:
        """Whether `presented` is one of the tokens: its sha256 compared with each token's, in
        constant time (hashing first hides the tokens' lengths too)."""
        digest = hashlib.sha256(presented).digest()
        ok = False
        for token in self._digests:
            ok |= hmac.compare_digest(token, digest)
        return ok


def _bearer(metadata) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization":
            if isinstance(value, str):
                value = value.encode("utf-8", "replace")
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


class TokenInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED for any call (health excepted) without a valid bearer token."""

    def __init__(self, tokens: Tokens):
        self.tokens = tokens

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES):
            return continuation(handler_call_details)
        token = _bearer(handler_call_details.invocation_metadata)
        if token is not None and self.tokens.valid(token):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:  # no such method: UNIMPLEMENTED, with no label or log line per name
            return None
        why = "no bearer token" if token is None else "the bearer token is not valid"
        return _denied(method, why, handler)


def _denied(method: str, why: str, handler):
    name = method.rsplit("/", 1)[-1] if method.startswith(_GRADIENTS) else method

    def deny(request_or_iterator, context):
        if method.startswith(_GRADIENTS):
            m.REQUESTS.labels(name, "UNAUTHENTICATED").inc()
        log.warning("%s UNAUTHENTICATED peer=%s: %s", name, context.peer(), why)
        context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            f"{why}: send 'authorization: Bearer <token>' metadata (gs.Client(..., token=...))",
        )

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


class ServerTls:
    """The server's TLS credentials; `reload()` reads the files again for new connections
    (certificate rotation without a restart)."""

    def __init__(self, cert: str, key: str, client_ca: str = ""):
        if not cert or not key:
            raise OSError("--tls-cert and --tls-key go together: give both, or neither")
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._next = None
        self._lock = threading.Lock()
        first = self._configuration()
        self.credentials = grpc.dynamic_ssl_server_credentials(
            first, self._fetch, require_client_authentication=bool(client_ca)
        )

    def _configuration(self):
        key = read_bytes(self.key, "--tls-key")
        cert = read_bytes(self.cert, "--tls-cert")
        ca = read_bytes(self.client_ca, "--tls-client-ca") if self.client_ca else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def _fetch(self):
        with self._lock:
            found, self._next = self._next, None
        return found

    def reload(self):
        try:
            configuration = self._configuration()
        except OSError as exc:
            log.error("TLS files not reloaded, the previous ones stay in force: %s", exc)
            return
        with self._lock:
            self._next = configuration
        log.info("TLS certificate files reloaded (new connections use them)")
