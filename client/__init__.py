"""`gs.Client`: the Engine's API against a gradserve server over gRPC."""

from .client import Client, DeadlineExceeded, RemoteStats, ServiceError, ServiceUnavailable

__all__ = ["Client", "DeadlineExceeded", "RemoteStats", "ServiceError", "ServiceUnavailable"]
