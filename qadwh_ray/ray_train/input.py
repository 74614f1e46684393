"""Ray Data input for Ray Train: class-balanced *global* batches, each worker streaming its slice.

Triplet mining needs every anchor to find positives in the batch, so batches
are class-balanced (P classes x K images, :class:`ClassBalancedBatchSampler`,
exactly as the local trainer draws them). With N workers the *global* batch is
class-balanced and worker ``r`` trains on the contiguous slots
``[r*B/N, (r+1)*B/N)`` of it; the objective then gathers codes, labels and class
rows from every worker, so anchors still see the whole global batch.

How the stream is built (everything lazy, nothing collected in the driver):

1. The driver passes one small dataset to the trainer: one row per epoch still
   to run (``{"epoch": e}``).
2. :class:`ClassBalancedDataConfig` (a ``ray.train.DataConfig``) turns it, for
   each rank, into a pipeline ``epoch → (step, slot, index)`` rows (the sampler
   replayed for ``(seed, epoch)``: ints only) ``→`` the rank's slots ``→``
   ``image`` + ``label`` columns: the images read from the dataset's own files,
   decoded, normalised and augmented in the Ray Data tasks
   (:mod:`qadwh_ray.data.readers`, :func:`prepare_images`). Only the
   catalog (ids, labels, file locations) is in the object store, never the
   pixels, so a training set larger than the object store still trains.
3. Each rank's pipeline runs with ``preserve_order=True``, so its rows arrive in
   step order and ``iter_torch_batches(batch_size=B/N)`` yields exactly its
   slice of global batch 0, 1, 2, ...; :func:`iter_local_batches` checks that
   every batch holds one step's rows and that steps are consecutive.

The sequence of global batches depends only on ``(labels, P, K, seed)``, never
on the number of workers: a run can resume with a different ``num_workers``
and still see the same batches, and N workers train on the batches the local
trainer would use.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Iterator, NamedTuple

import numpy as np
from ray.train import DataConfig

from qadwh_ray.core.triplets import ClassBalancedBatchSampler

if TYPE_CHECKING:  # torch stays out of the Ray Data tasks that import this module
    import torch

DATASET_NAME = "train"
_ROWS_PER_BLOCK = 16384  # plan rows per output block (ints; images are added per rank)


@dataclass(frozen=True)
class BatchPlan:
    """Which global batches a run trains on: ``total_steps`` of ``global_batch`` images."""

    classes_per_batch: int
    images_per_class: int
    seed: int
    steps_per_epoch: int
    total_steps: int
    start_step: int = 0  # first step the driver's dataset starts at (a resumed run)

    @property
    def global_batch(self) -> int:
        return self.classes_per_batch * self.images_per_class

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def local_batch(self, world_size: int) -> int:
        if world_size < 1 or self.global_batch % world_size:
            raise ValueError(
                f"the global batch ({self.classes_per_batch} classes x {self.images_per_class} images = "
                f"{self.global_batch}) must split evenly over num_workers={world_size}"
            )
        return self.global_batch // world_size

    def sampler(self, labels: np.ndarray) -> ClassBalancedBatchSampler:
        return ClassBalancedBatchSampler(labels, self.classes_per_batch, self.images_per_class, seed=self.seed)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_config(cls, cfg, labels: np.ndarray, start_step: int = 0) -> "BatchPlan":
        """The plan of a :class:`TrainConfig` on these training labels (fails fast on impossible batches)."""
        sampler = ClassBalancedBatchSampler(labels, cfg.classes_per_batch, cfg.images_per_class, seed=cfg.seed)
        spe = len(sampler)  # the local trainer's batches per epoch
        total = cfg.epochs * spe
        if cfg.max_steps:
            total = min(total, int(cfg.max_steps))
        return cls(cfg.classes_per_batch, cfg.images_per_class, cfg.seed, spe, total, min(start_step, total))


def epoch_batches(labels: np.ndarray, plan: BatchPlan, epoch: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(step, global batch indices)`` of one epoch, as the local trainer draws them, capped at total_steps."""
    sampler = plan.sampler(labels)
    sampler.set_epoch(epoch)
    for b, idx in enumerate(sampler):
        step = epoch * plan.steps_per_epoch + b
        if step >= plan.total_steps:
            return
        yield step, idx


class _PlanRows:
    """Ray Data UDF: ``{"epoch": [e]}`` → rows ``(step, slot, index)`` of that epoch's global batches."""

    def __init__(self, labels_ref, plan: BatchPlan):
        self.labels_ref = labels_ref
        self.plan = plan

    def __call__(self, batch: dict) -> Iterator[dict]:
        import ray

        labels = ray.get(self.labels_ref)
        gb = self.plan.global_batch
        per_block = max(1, _ROWS_PER_BLOCK // gb)
        for epoch in np.asarray(batch["epoch"]).tolist():
            steps, index = [], []
            for step, idx in epoch_batches(labels, self.plan, int(epoch)):
                if step < self.plan.start_step:
                    continue
                steps.append(step)
                index.append(idx)
                if len(steps) == per_block:
                    yield self._rows(steps, index)
                    steps, index = [], []
            if steps:
                yield self._rows(steps, index)

    def _rows(self, steps: list[int], index: list[np.ndarray]) -> dict:
        gb = self.plan.global_batch
        return {
            "step": np.repeat(np.asarray(steps, dtype=np.int64), gb),
            "slot": np.tile(np.arange(gb, dtype=np.int32), len(steps)),
            "index": np.concatenate(index).astype(np.int64),
        }


_SOURCES: dict = {}


def _training_source(source_ref) -> dict:
    """The training source behind an ObjectRef (catalog: ids, labels, file locations — no pixels),
    fetched once per worker process."""
    key = source_ref.hex()
    if key not in _SOURCES:
        import ray

        _SOURCES.clear()
        _SOURCES[key] = ray.get(source_ref)
    return _SOURCES[key]


class _RankSlice:
    """Ray Data UDF: keep one rank's slots of every global batch; read, decode, normalise and augment
    their images (the CPU work of the input pipeline, off the training worker)."""

    def __init__(self, source_ref, rank: int, local_batch: int):
        self.source_ref = source_ref
        self.rank = rank
        self.local_batch = local_batch

    def __call__(self, batch: dict) -> dict:
        from qadwh_ray.data.readers import read_images

        keep = np.asarray(batch["slot"]) // self.local_batch == self.rank
        index = np.asarray(batch["index"])[keep]
        steps = np.asarray(batch["step"])[keep]
        src = _training_source(self.source_ref)
        size = src["image_size"]
        positions = src["positions"][index]
        images, _ = read_images(src["catalog"], positions, size=(size, size))
        return {
            "step": steps,
            "index": index,
            "image": prepare_images(images, steps, self.rank, src),
            "label": src["catalog"].labels[positions],
        }


def prepare_images(images: np.ndarray, steps: np.ndarray, rank: int, src: dict) -> np.ndarray:
    """uint8 pixels -> the float32 ``(n, C, H, W)`` batch the network trains on: normalised, and with
    ``augment`` randomly cropped, flipped (and erased) with one random stream per (seed, step, rank) —
    the same whichever task or block a step's rows land in."""
    import torch

    from qadwh_ray.data.transforms import to_float_tensor, train_augment

    x = to_float_tensor(images, mean=src["mean"], std=src["std"])
    if src["augment"]:
        for step in np.unique(steps).tolist():
            rows = np.flatnonzero(steps == step)
            seed = int(np.random.default_rng([src["seed"], step, rank, 1]).integers(2**62))
            x[rows] = train_augment(x[rows], torch.Generator().manual_seed(seed), erase=src["erase"])
    return x.numpy()


def training_source(catalog, positions: np.ndarray, image_size: int, model_config, cfg) -> dict:
    """What the rank pipelines read training images from (metadata only, put in the object store once)
    and how they prepare them: the model's input size and normalisation, the config's augmentation."""
    return {
        "catalog": catalog,
        "positions": np.asarray(positions, dtype=np.int64),
        "image_size": int(image_size),
        "mean": model_config.mean,
        "std": model_config.std,
        "augment": bool(cfg.augment),
        "erase": float(cfg.erase_probability),
        "seed": int(cfg.seed),
    }


def rank_dataset(epochs_ds, source_ref, labels_ref, plan: BatchPlan, rank: int, world_size: int, num_cpus: float = 0.0):
    """One rank's stream: its slice of every global batch, in step order (needs ``preserve_order``)."""
    local = plan.local_batch(world_size)
    return epochs_ds.map_batches(_PlanRows(labels_ref, plan), batch_size=1, num_cpus=num_cpus).map_batches(
        _RankSlice(source_ref, rank, local), batch_size=None, num_cpus=num_cpus
    )


class ClassBalancedDataConfig(DataConfig):
    """Shards the ``train`` dataset deterministically: rank ``r`` gets slots ``[r*B/N, (r+1)*B/N)``
    of every class-balanced global batch, streamed in step order.

    Ray Train's default split (``streaming_split``) hands blocks to whichever
    worker asks next, which would break the "each worker holds its part of the
    same global batch" contract; this config builds one ordered pipeline per
    rank instead. Other datasets (if any) get Ray Train's default handling.

    ``num_cpus`` is what each Ray Data task asks for: the work is index
    look-ups (the float conversion and augmentation run in the training
    worker), so the default 0 lets the pipeline run even when training workers
    hold every CPU of the cluster.
    """

    def __init__(
        self, source_ref, labels_ref, plan: BatchPlan, num_cpus: float = 0.0, progress_bars: bool = False, **kwargs
    ):
        super().__init__(**kwargs)
        self.progress_bars = progress_bars
        self.source_ref = source_ref
        self.labels_ref = labels_ref
        self.plan = plan
        self.num_cpus = num_cpus

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        out = [{} for _ in range(world_size)]
        others = {k: v for k, v in datasets.items() if k != DATASET_NAME}
        if others:
            for i, its in enumerate(super().configure(others, world_size, worker_handles, worker_node_ids, **kwargs)):
                out[i].update(its)
        if DATASET_NAME in datasets:
            base = datasets[DATASET_NAME]
            for rank in range(world_size):
                ds = rank_dataset(base, self.source_ref, self.labels_ref, self.plan, rank, world_size, self.num_cpus)
                options = self._resolve_execution_options(DATASET_NAME)
                options.preserve_order = True  # batch b's rows must arrive as batch b
                ds.context.execution_options = options
                # a bar per worker counting index rows tells a user nothing: the worker loop shows step progress
                ds.context.enable_progress_bars = self.progress_bars
                out[rank][DATASET_NAME] = ds.iterator()
        return out


def epochs_dataset(plan: BatchPlan):
    """The small dataset handed to the trainer: one row per epoch still to run."""
    import ray.data

    first = plan.epoch_of(plan.start_step)
    epochs = list(range(first, plan.num_epochs))
    return ray.data.from_items([{"epoch": e} for e in epochs], override_num_blocks=max(1, len(epochs)))


class LocalBatch(NamedTuple):
    step: int
    images: "torch.Tensor"  # (b, C, H, W) float32 on the training device: normalised and augmented
    labels: "torch.Tensor"  # (b, c) float32 on the training device
    index: np.ndarray  # rows of the training arrays (for checks)


def iter_local_batches(
    shard,
    plan: BatchPlan,
    world_size: int,
    start_step: int,
    device: "torch.device | str" = "cpu",
    prefetch_batches: int = 1,
) -> Iterator[LocalBatch]:
    """This worker's batches from ``start_step`` to ``plan.total_steps``, checked to be whole, single-step
    and consecutive. Rows before ``start_step`` (a restart inside one fit) are skipped."""
    import torch

    local = plan.local_batch(world_size)
    expected = start_step
    if start_step >= plan.total_steps:
        return
    for batch in shard.iter_torch_batches(batch_size=local, prefetch_batches=prefetch_batches, device="cpu"):
        steps = batch["step"]
        step = int(steps[0])
        if step < start_step and int(steps[-1]) < start_step:
            continue
        if len(steps) != local or bool((steps != step).any()) or step != expected:
            raise RuntimeError(
                f"training data out of step: expected {local} rows of step {expected}, got {len(steps)} rows "
                f"of steps {sorted(set(steps.tolist()))}"
            )
        yield LocalBatch(
            step,
            batch["image"].to(device, non_blocking=True),
            batch["label"].to(device=device, dtype=torch.float32, non_blocking=True),
            batch["index"].numpy(),
        )
        expected += 1
        if expected >= plan.total_steps:
            return
    if expected < plan.total_steps:
        raise RuntimeError(f"training data ended at step {expected}, expected {plan.total_steps} steps")
