"""The gradserve gRPC server: `gradserve serve`, or `serve(Config(...))` from Python."""

from .server import Config, Running, serve, start
from .servicer import SERVICE_NAME, Servicer

__all__ = ["SERVICE_NAME", "Config", "Running", "Servicer", "serve", "start"]
