"""The workers of a cluster run: how many, on what, with how many threads; handing out work and
replacing workers that die.

Slots: on a GPU cluster one worker per GPU (`num_gpus=1`; Ray gives each its own device through
CUDA_VISIBLE_DEVICES) with the node's CPUs shared among them for decoding; on CPUs `local:N` gives
N workers of (cores / N) threads, and a joined cluster one worker per `threads` CPUs of each node
(default 4). Each worker's ONNX Runtime and decode threads equal the CPUs Ray reserved for it, so
workers never oversubscribe a node's cores.

The driver replaces a dead worker itself rather than through Ray's `max_restarts` /
`max_task_retries`: it must know which shard was lost (to count it, to bound the attempts per
shard, and to record who mined what), and a worker that refuses to start must stop the run, not
be restarted.
"""
from __future__ import annotations

from typing import Callable, Iterator

from ..errors import DeviceUnavailable
from ..runtime import resolve_device
from ._actor import ShardWorker

CPU_THREADS = 4  # CPUs per worker on a joined CPU cluster when --threads is not given
POLL_SECONDS = 0.5


class Pool:
    """Worker slots of one run (see the module docstring); `start`, then iterate `results`."""

    def __init__(self, cluster, address, device: str, threads: int | None, workers: int | None,
                 heads: str = "auto", verb: str = "mining", what: str = "shard"):
        self.ray, self.address, self.heads, self.verb, self.what = cluster.ray, address, heads, verb, what
        self.error = cluster.error
        nodes = cluster.nodes()
        gpus = sum(n["gpus"] for n in nodes)
        if address.local:
            self.device = resolve_device(device, option="--device").name
            self.slots = address.workers
            if self.device == "cuda" and self.slots > gpus:
                raise DeviceUnavailable(f"--ray {address.spec} on cuda needs {self.slots} GPUs, Ray sees {gpus}")
            self.cpus = max(1, cluster.local_cpus // self.slots)
        else:
            if device == "cuda" and not gpus:
                raise DeviceUnavailable(f"--device cuda: the Ray cluster at {address.spec} has no GPUs")
            self.device = "cuda" if gpus and device != "cpu" else "cpu"
            if self.device == "cuda":
                self.slots = gpus
                self.cpus = max(1, min(n["cpus"] // n["gpus"] for n in nodes if n["gpus"]))
            else:
                self.cpus = threads or min(CPU_THREADS, max(n["cpus"] for n in nodes))
                self.slots = sum(n["cpus"] // self.cpus for n in nodes)
                if not self.slots:
                    raise self.error(f"--ray {address.spec}: no node has {self.cpus} CPUs for a worker")
        self.threads = threads or self.cpus
        self.decode_workers = workers or self.cpus
        self.actors: list = []
        self.busy: dict = {}          # result ref -> (slot, item)
        self.attempts: dict = {}      # item -> attempts so far
        self.alive: set[int] = set()  # slots whose worker has said it is ready
        self.started = self.retried = 0
        self._ready: dict = {}
        self._progress: dict[int, int] = {}
        self._polls: dict = {}

    def describe(self) -> str:
        return (f"{self.slots} worker(s) on {self.device}, {self.threads} thread(s) and {self.decode_workers} "
                f"decoder(s) each, Ray {self.address.spec}")

    def label(self) -> str:
        return f"{self.verb} ({len(self.alive)}/{self.slots} workers)"

    def closing_note(self) -> str:
        return (f"cluster  {self.slots} worker(s) on {self.device} ({self.address.spec}); {self.started} worker "
                f"process(es) ran, {self.retried} {self.what}(s) retried")

    def start(self, model_bytes: bytes, job: dict, worker: type = ShardWorker, method: str = "mine_shard") -> None:
        """Put the model in the object store (once: every worker, also a replacement, reads that
        one copy) and start the workers: `worker(model_bytes, job)` objects, each item of work is
        `worker.method(*item[1:])` (item[0] names it in messages)."""
        ray = self.ray
        self._model = ray.put(model_bytes)
        self._job, self._method = job, method
        self._cls = ray.remote(num_cpus=self.cpus, num_gpus=1 if self.device == "cuda" else 0, max_restarts=0,
                               max_concurrency=2)(worker)
        self.actors = [None] * self.slots
        for slot in range(self.slots):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        actor = self._cls.remote(self._model, self._job)
        self.actors[slot] = actor
        self._ready[actor.ready.remote()] = slot
        self.started += 1

    def in_hand(self) -> int:
        """Images read so far of the shards being mined now."""
        return sum(self._progress.get(slot, 0) for slot, _ in self.busy.values())

    def results(self, todo, max_attempts: int, tick: Callable[[], None]) -> Iterator[tuple[tuple, dict]]:
        """Hand out the items of `todo` (a deque of tuples, e.g. (shard, first_batch, stop_batch))
        and yield (item, result) as they finish; `tick()` is called about twice a second meanwhile."""
        ray = self.ray
        free = list(range(self.slots))
        while todo or self.busy:
            while todo and free:
                self._submit(free.pop(0), todo.popleft())
            self._check_ready()
            finished, _ = ray.wait(list(self.busy), num_returns=1, timeout=POLL_SECONDS)
            self._poll()
            tick()
            for ref in finished:
                slot, item = self.busy.pop(ref)
                self._progress.pop(slot, None)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    if getattr(exc, "actor_init_failed", False):
                        raise self.error(f"a worker could not be created: {_last_line(exc)}") from None
                    self._replace(slot, item, exc, max_attempts)
                    todo.appendleft(item)
                    free.append(slot)
                    continue
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None) or exc
                    raise self.error(f"a worker failed on {self.what} {item[0]}: {type(cause).__name__}: "
                                     f"{_one_line(cause)}") from None
                if "failure" in result:
                    raise self.error(f"worker {result['where']} cannot start: {result['failure']}")
                free.append(slot)
                yield item, result

    def _submit(self, slot: int, item: tuple) -> None:
        self.attempts[item] = self.attempts.get(item, 0) + 1
        self.busy[getattr(self.actors[slot], self._method).remote(*item[1:])] = (slot, item)

    def _replace(self, slot: int, item: tuple, exc: Exception, max_attempts: int) -> None:
        self.alive.discard(slot)
        if self.attempts[item] >= max_attempts:
            raise self.error(f"{self.what} {item[0]} lost its worker {max_attempts} times; the last: {_one_line(exc)[:300]}")
        self.retried += 1
        try:
            self.ray.kill(self.actors[slot], no_restart=True)
        except Exception:  # already gone: nothing to stop
            pass
        self._spawn(slot)

    def _check_ready(self) -> None:
        ray = self.ray
        if not self._ready:
            return
        done, _ = ray.wait(list(self._ready), num_returns=len(self._ready), timeout=0)
        for ref in done:
            slot = self._ready.pop(ref)
            try:
                info = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                if getattr(exc, "actor_init_failed", False):
                    raise self.error(f"a worker could not be created: {_last_line(exc)}") from None
                continue  # killed while starting: its shard's task reports it and it is replaced
            if info["failure"] is not None:
                raise self.error(f"worker {info['where']} cannot start: {info['failure']}")
            self.alive.add(slot)

    def _poll(self) -> None:
        """Collect the workers' answers to the last progress question, ask the busy ones again."""
        ray = self.ray
        if self._polls:
            done, _ = ray.wait(list(self._polls), num_returns=len(self._polls), timeout=0)
            for ref in done:
                slot = self._polls.pop(ref)
                try:
                    self._progress[slot] = ray.get(ref)
                except ray.exceptions.RayError:
                    pass  # a dying worker: its shard's task tells
        asked = set(self._polls.values())
        for slot, _ in self.busy.values():
            if slot not in asked:
                self._polls[self.actors[slot].progress.remote()] = slot

    def close(self) -> None:
        """Stop every worker (a finished, stopped or failed run)."""
        for actor in self.actors:
            if actor is not None:
                try:
                    self.ray.kill(actor, no_restart=True)
                except Exception:  # already dead
                    pass
        self.actors, self.busy = [], {}


def _last_line(exc: BaseException) -> str:
    """The exception line at the end of a Ray error's text (its remote traceback comes first)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__

