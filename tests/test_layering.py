"""The server and the client share their wire format (gradserve.protocol, gradserve.engine.wire)
and nothing else: each imports and runs with the other blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK = """
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name == {blocked!r} or name.startswith({blocked!r} + "."):
            raise ImportError(f"{{name}} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocked())
"""


def run(blocked: str, code: str) -> str:
    script = BLOCK.format(blocked=blocked) + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_server_serves_without_the_client():
    out = run(
        "gradserve.client",
        """
        import grpc
        import numpy as np

        import gradserve as gs
        from gradserve.protocol import from_value, method_path, to_tensor
        from gradserve.server import serve
        from gradserve.v1 import service_pb2 as pb

        try:
            import gradserve.client  # noqa: F401
        except ImportError:
            pass
        else:
            raise AssertionError("the block does not work")
        running = serve(block=False, host="127.0.0.1", port=0, metrics_port=-1)
        try:
            graph = gs.trace(lambda x: x * 3.0, np.ones(2))
            request = pb.EvaluateRequest(
                graph=pb.GraphRef(body=graph.to_bytes()),
                args=[pb.TensorRef(tensor=to_tensor(np.array([1.0, 2.0])))],
            )
            with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                call = channel.unary_unary(method_path("Evaluate"))
                reply = pb.EvaluateResponse.FromString(
                    call(request.SerializeToString(), timeout=30)
                )
            print(from_value(reply.outputs).tolist())
        finally:
            running.stop(grace=0)
        assert not any(name.startswith("gradserve.client") for name in sys.modules)
        """,
    )
    assert out.strip() == "[3.0, 6.0]"


def test_the_client_imports_without_the_server():
    run(
        "gradserve.server",
        """
        import gradserve as gs

        client = gs.Client("127.0.0.1:1", timeout=1)
        client.close()
        assert not any(name.startswith("gradserve.server") for name in sys.modules)
        """,
    )
