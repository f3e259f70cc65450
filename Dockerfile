# gradserve server image. Build from the repository root:
#   docker build -t gradserve:0.1.0 .
# Settings come from GRADSERVE_* environment variables (see `gradserve serve --help`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user owns nothing in the image but its home; the server only needs to read.
RUN groupadd --system --gid 10001 gradserve \
 && useradd --system --uid 10001 --gid gradserve --home-dir /home/gradserve --create-home \
            --shell /usr/sbin/nologin gradserve

# The project, installed from this repository (not editable: the source tree is not kept).
WORKDIR /tmp/gradserve-src
COPY pyproject.toml README.md ./
COPY gradserve ./gradserve
COPY engine ./engine
COPY server ./server
COPY client ./client
COPY proto ./proto
RUN pip install --no-cache-dir . \
 && rm -rf /tmp/gradserve-src

WORKDIR /home/gradserve
USER 10001:10001

# gRPC on GRADSERVE_PORT, Prometheus /metrics on GRADSERVE_METRICS_PORT, on every interface.
ENV GRADSERVE_HOST=0.0.0.0 \
    GRADSERVE_PORT=50051 \
    GRADSERVE_METRICS_PORT=9464
EXPOSE 50051 9464

# The standard gRPC health check (grpc.health.v1): exits 0 only when the server is SERVING,
# so a draining replica (NOT_SERVING after SIGTERM) is taken out of rotation. Its other exit
# statuses (1 not serving, 3 unreachable, 4 timeout; see `gradserve health --help`) become 1,
# the one failure status Docker defines. The probe imports grpc only, not the engine.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["sh", "-c", "gradserve health --target \"127.0.0.1:${GRADSERVE_PORT}\" || exit 1"]

# SIGTERM (docker stop) makes the server stop accepting and drain in-flight calls.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gradserve"]
CMD ["serve"]
