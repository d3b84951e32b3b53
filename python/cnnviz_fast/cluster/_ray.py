"""Ray itself: importing it (an optional extra), parsing `--ray`, starting or joining a cluster.

`--ray local:N` starts a cluster on this machine for this run (N worker slots, dashboard off,
stopped at the end); `--ray auto` joins the cluster `ray start` made here (or RAY_ADDRESS);
`--ray ray://host:port` (or any address `ray.init` takes) joins a remote one. A program that has
called `ray.init` itself keeps its connection: `ray="auto"` then uses that cluster as it is.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import CnnvizError
from ..runtime import cores

INSTALL = 'pip install "cnnviz_fast[ray]"'
# The local cluster's object store: partial states are a few MB per shard and the model travels
# once, so a small store suffices and leaves the machine's memory to the decoders.
LOCAL_OBJECT_STORE = 256 * 1024 ** 2


def import_ray(error: type[CnnvizError] = CnnvizError):
    """The `ray` module, or `error` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise error(f"--ray needs Ray, which is not installed here ({exc}); install the optional extra: "
                    f"{INSTALL}") from None
    return ray


@dataclass(frozen=True)
class Address:
    """A parsed `--ray` value: `local` (start a cluster of `workers` slots) or `address` to join."""

    spec: str
    local: bool
    workers: int = 0
    address: str = ""


def parse_address(spec: str, error: type[CnnvizError] = CnnvizError) -> Address:
    """`local:N`, `auto`, or a cluster address (`ray://host:port`, `host:port`)."""
    text = str(spec).strip()
    if text.startswith("local"):
        _, _, n = text.partition(":")
        if not n.isdigit() or int(n) < 1:
            raise error(f"--ray {text}: write local:N with N >= 1 workers (e.g. local:{cores()})")
        return Address(text, True, int(n))
    if not text:
        raise error("--ray needs a value: local:N, auto, or ray://host:port")
    return Address(text, False, 0, text)


class Cluster:
    """A connection for one run: `with Cluster(address) as c:` starts or joins, and on leaving stops
    what it started (a local cluster) or disconnects (a joined one; the cluster keeps running)."""

    def __init__(self, address: Address, error: type[CnnvizError] = CnnvizError, threads: int | None = None):
        self.address, self.error = address, error
        self.ray = import_ray(error)
        self._connected_here = False
        # A local cluster's CPUs: `threads` per worker slot, at least one each.
        self.local_cpus = address.workers * max(1, threads or cores() // max(1, address.workers))

    def __enter__(self) -> "Cluster":
        ray = self.ray
        if ray.is_initialized():
            if self.address.local:
                raise self.error(f"--ray {self.address.spec}: this process is already connected to a Ray cluster; "
                                 "use ray='auto' to run on it")
            return self
        try:
            if self.address.local:
                ray.init(address="local", num_cpus=self.local_cpus, include_dashboard=False,
                         object_store_memory=LOCAL_OBJECT_STORE, log_to_driver=False, configure_logging=True,
                         logging_level="ERROR")
            else:
                ray.init(address=self.address.address, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise self.error(f"--ray {self.address.spec}: cannot {'start' if self.address.local else 'join'} the "
                             f"Ray cluster: {' '.join(str(exc).split())[:400]}") from None
        self._connected_here = True
        return self

    def __exit__(self, *exc) -> None:
        if self._connected_here:
            self.ray.shutdown()

    def nodes(self) -> list[dict]:
        """The alive nodes: [{"cpus": n, "gpus": n, "host": name}]."""
        out = []
        for node in self.ray.nodes():
            if node.get("Alive"):
                res = node.get("Resources", {})
                out.append({"cpus": int(res.get("CPU", 0)), "gpus": int(res.get("GPU", 0)),
                            "host": node.get("NodeManagerHostname", "?")})
        return out
