"""Generated protobuf and gRPC code for gradserve.v1 (regenerate with proto/generate.sh)."""
