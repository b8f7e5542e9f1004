"""``--ray-replicas N``: a local Ray for one machine with several GPUs, stopped with the server.

:func:`start_ray_server` starts Ray on this machine (no dashboard), Serve's HTTP proxy on the
server's host and port, and the application of :mod:`.ray_serve`; :class:`RayServer` offers what
the command line uses of a :class:`~speech2image_nb.server.BackgroundServer` (``url``,
``join``, ``stop``, ``error``). ``stop()`` shuts Serve and Ray down, which ends every Ray process
this one started. For a cluster, use ``serve run`` / ``serve deploy`` with ``deploy/ray-serve.yaml``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading

from ..errors import ServerUnreachable
from .ray_serve import EngineRecipe, IngressOptions, ReplicaOptions, ScalingOptions, image_app

__all__ = ["APP_NAME", "RayServer", "start_ray_server"]

logger = logging.getLogger(__name__)

APP_NAME = "speech2image"


def _port_or_free(host: str, port: int) -> int:
    """``port``, or a free one for port 0 (Serve's proxy needs a number)."""
    if port:
        return port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RayServer:
    """The image server on a local Ray, until :meth:`stop`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.error: BaseException | None = None
        self._stopped = threading.Event()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait until :meth:`stop` was called (``timeout_s`` at most); True when it was."""
        return self._stopped.wait(timeout_s)

    def stop(self) -> None:
        """Shut Serve and Ray down (every Ray process started here ends)."""
        import ray
        from ray import serve

        if self._stopped.is_set():
            return
        self._stopped.set()
        try:
            serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()


def start_ray_server(
    recipe: EngineRecipe,
    *,
    scaling: ScalingOptions,
    replica: ReplicaOptions,
    ingress: IngressOptions,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> RayServer:
    """Start a local Ray, Serve on ``host:port`` and the image application; wait until it serves.

    GPUs: Ray sees this machine's GPUs; ``scaling.gpus_per_replica`` of them go to each replica.
    """
    import ray
    from ray import serve

    port = _port_or_free(host, port)
    # logical CPUs: enough for every replica and the ingress even on a 2-core machine (replicas on
    # GPUs mostly wait for them; the CPU count only decides how many Ray places)
    wanted_cpus = scaling.replicas * scaling.cpus_per_replica + scaling.ingress_cpus
    ray.init(
        address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(wanted_cpus)), include_dashboard=False
    )
    server = RayServer(f"http://{f'[{host}]' if ':' in host else host}:{port}")
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(
            image_app(recipe, scaling=scaling, replica=replica, ingress=ingress),
            name=APP_NAME,
            route_prefix="/",
            blocking=False,
        )
    except BaseException as exc:
        server.stop()
        raise ServerUnreachable(
            f"The image server did not start on Ray ({exc}); see the Ray log above.", url=server.url
        ) from exc
    return server
