"""Environment servers on a Ray cluster: any ``mem1 serve ...`` command run inside a detached, named Ray actor, bound
to the node's address, so every agent-loop worker reaches it at ``http://NODE_IP:PORT``.

Two ways in: ``mem1 serve retrieval --index idx/ --on-ray`` (starts it, prints the URL, returns), or the recipes'
``mem1_servers`` list, which ``python -m verl_mem1.train`` starts before training (``verl_mem1.train``) and whose URLs
it puts into ``mem1.retriever_url`` / ``mem1.webshop_url``. A server with the same name already running is reused (a
second job finds the first job's retriever). Both need a running cluster (``ray start --head`` or a ``ray job submit``
job).
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Sequence

ON_RAY_FLAGS = ("--on-ray", "--ray-name", "--ray-cpus")  # what the actor must not see again


class ServerActor:
    """Runs ``mem1 serve ARGV`` on ``0.0.0.0`` and a free port of its node, in a thread of the actor process."""

    def __init__(self, argv: Sequence[str]):
        from env_servers.background import free_port

        self.port = free_port("0.0.0.0")
        self.argv = ["serve", *argv, "--host", "0.0.0.0", "--port", str(self.port), "--no-access-log"]
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="mem1-serve", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from env_servers.commands import run_command

        try:
            run_command(self.argv)
        except BaseException as exc:  # noqa: BLE001 - SystemExit from argparse included: reported by url()
            self.error = exc

    def url(self, timeout_s: float = 600.0) -> str:
        """The server's URL once it answers ``/health`` (loading a large index can take minutes)."""
        import httpx
        import ray

        deadline = time.monotonic() + timeout_s
        local = f"http://127.0.0.1:{self.port}"
        while time.monotonic() < deadline:
            if self.error is not None or not self.thread.is_alive():
                raise RuntimeError(f"mem1 {shlex.join(self.argv)} stopped: {self.error!r}")
            try:
                if httpx.get(local + "/health", timeout=2.0).status_code == 200:
                    return f"http://{ray.util.get_node_ip_address()}:{self.port}"
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"mem1 {shlex.join(self.argv)} did not answer /health within {timeout_s} s")


def server_name(argv: Sequence[str]) -> str:
    """The default actor name: the server kind and a hash of its arguments (same command, same server)."""
    import hashlib

    return f"mem1-{argv[0]}-{hashlib.sha1(shlex.join(argv).encode()).hexdigest()[:8]}"


def server_gpus(argv: Sequence[str]) -> int:
    """GPUs the server's actor reserves: ``--faiss-gpus N`` if given, else one for ``--device cuda[:i]``, else none.

    An actor that reserves no GPU runs outside Ray's accounting, beside vLLM and FSDP on the same devices."""
    from env_servers.commands import command_parser

    args = command_parser().parse_args(["serve", *argv])  # the options as the server itself will read them
    faiss = getattr(args, "faiss_gpus", None)
    if faiss:
        return faiss
    return 1 if str(getattr(args, "device", None) or "").startswith("cuda") else 0


def serve_on_ray(
    argv: Sequence[str], *, name: str | None = None, num_cpus: float = 1.0, address: str | None = "auto"
) -> str:
    """Start (or find) the server ``mem1 serve ARGV`` as a detached Ray actor; returns its URL.

    Args:
        argv: the ``mem1 serve`` arguments, e.g. ``["retrieval", "--index", "/shared/idx"]``.
        name: the actor's name (default: ``server_name(argv)``).
        num_cpus: CPUs the actor reserves on its node.
        address: the Ray cluster to join when this process is not connected yet (``None``: start a local one).
    """
    import ray

    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    actor_cls = ray.remote(ServerActor)
    actor = actor_cls.options(
        name=name or server_name(argv),
        lifetime="detached",
        get_if_exists=True,
        num_cpus=num_cpus,
        num_gpus=server_gpus(argv),  # Ray then sets the actor's CUDA_VISIBLE_DEVICES to the GPUs it holds
    ).remote(list(argv))
    return ray.get(actor.url.remote())


def strip_on_ray_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--on-ray`` / ``--ray-name X`` / ``--ray-cpus N`` (also in ``--flag=value`` form)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        key = arg.split("=", 1)[0]
        if key in ON_RAY_FLAGS:
            skip = key != "--on-ray" and "=" not in arg
            continue
        out.append(arg)
    return out
