"""The gradserve gRPC server: `gradserve serve`, or `serve(Config(...))` from Python."""

from gradserve.protocol import SERVICE_NAME

from .server import Config, Running, serve, start
from .servicer import Servicer

__all__ = ["SERVICE_NAME", "Config", "Running", "Servicer", "serve", "start"]
