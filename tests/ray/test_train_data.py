"""Ray Data input of Ray Train: every worker streams its slice of the same class-balanced global batch."""

from types import SimpleNamespace

import numpy as np
import pytest

from qadwh_ray.core.triplets import ClassBalancedBatchSampler
from qadwh_ray.training.config import TrainConfig
from qadwh_ray.ray_train.input import BatchPlan, ClassBalancedDataConfig, epochs_dataset, iter_local_batches

pytestmark = pytest.mark.ray


def _data(n=120, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 6, 6), dtype=np.uint8)
    labels = np.zeros((n, classes), np.uint8)
    labels[np.arange(n), np.arange(n) % classes] = 1
    return images, labels


def _shards(ray, images, labels, plan, world):
    """The rank streams over a real dataset: the images written as a Parquet table and read back by the tasks."""
    import tempfile

    from qadwh_ray.data.catalog import open_catalog
    from qadwh_ray.data.writers import write_parquet_images
    from qadwh_ray.ray_train.input import training_source

    root = tempfile.mkdtemp(prefix="qadwh-train-data-")
    write_parquet_images(f"{root}/train.parquet", images, labels, row_group_size=16)
    cat = open_catalog(f"{root}/train.parquet")
    model_config = SimpleNamespace(mean=0.0, std=1.0)  # pixels / 255, unchanged otherwise
    source = training_source(cat, np.arange(len(cat)), images.shape[1], model_config, SimpleNamespace(
        augment=False, erase_probability=0.0, seed=0))
    dc = ClassBalancedDataConfig(ray.put(source), ray.put(labels), plan)
    per_rank = dc.configure({"train": epochs_dataset(plan)}, world, None, None)
    return [its["train"] for its in per_rank]


def test_each_worker_gets_its_slice_of_the_local_trainers_batches(ray_cluster):
    images, labels = _data()
    cfg = TrainConfig(classes_per_batch=4, images_per_class=3, epochs=3, max_steps=25, seed=5)
    plan = BatchPlan.for_config(cfg, labels)
    assert (plan.steps_per_epoch, plan.total_steps, plan.global_batch) == (10, 25, 12)

    # the local trainer's batches: the sampler epoch by epoch, capped at max_steps
    sampler = ClassBalancedBatchSampler(labels, 4, 3, seed=5)
    expected = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        expected.extend(list(sampler))
    expected = expected[:25]

    world = 3  # a global batch of 12 split 4/4/4
    got = [list(iter_local_batches(s, plan, world, start_step=0)) for s in _shards(ray_cluster, images, labels, plan, world)]
    assert [len(g) for g in got] == [25, 25, 25]
    for step in range(25):
        parts = [g[step] for g in got]
        assert {p.step for p in parts} == {step}
        index = np.concatenate([p.index for p in parts])
        np.testing.assert_array_equal(index, expected[step])  # rank order = the global batch's order
        for p in parts:
            np.testing.assert_allclose(p.images.numpy()[:, 0], images[p.index] / 255.0, atol=1e-6)
            np.testing.assert_array_equal(p.labels.numpy(), labels[p.index].astype(np.float32))
        classes = labels[index].argmax(1)
        assert sorted(np.bincount(classes)[np.bincount(classes) > 0].tolist()) == [3, 3, 3, 3]  # P x K


def test_resumed_stream_starts_at_the_checkpoint_step(ray_cluster):
    images, labels = _data()
    cfg = TrainConfig(classes_per_batch=2, images_per_class=2, epochs=2)
    full = BatchPlan.for_config(cfg, labels)
    resumed = BatchPlan.for_config(cfg, labels, start_step=37)
    (shard,) = _shards(ray_cluster, images, labels, resumed, 1)
    (whole,) = _shards(ray_cluster, images, labels, full, 1)
    tail = list(iter_local_batches(shard, resumed, 1, start_step=37))
    ref = list(iter_local_batches(whole, full, 1, start_step=37))  # a restart inside a fit skips rows instead
    assert [b.step for b in tail] == list(range(37, full.total_steps)) == [b.step for b in ref]
    for a, b in zip(tail, ref):
        np.testing.assert_array_equal(a.index, b.index)


def test_global_batch_must_split_over_workers():
    _, labels = _data()
    plan = BatchPlan.for_config(TrainConfig(classes_per_batch=3, images_per_class=3), labels)
    with pytest.raises(ValueError, match="split evenly over num_workers=2"):
        plan.local_batch(2)


def test_augmentation_runs_in_the_data_tasks_seeded_per_step_and_rank():
    from qadwh_ray.ray_train.input import prepare_images

    images = np.random.default_rng(1).integers(0, 256, size=(8, 10, 10), dtype=np.uint8)
    src = {"mean": 0.5, "std": 0.25, "augment": True, "erase": 0.0, "seed": 4}
    steps = np.array([3, 3, 3, 3, 4, 4, 4, 4])
    whole = prepare_images(images, steps, 0, src)
    assert whole.shape == (8, 1, 10, 10) and whole.dtype == np.float32
    # the same step's rows get the same augmentation whichever block they arrive in
    np.testing.assert_array_equal(prepare_images(images[4:], steps[4:], 0, src), whole[4:])
    assert not np.array_equal(prepare_images(images, steps, 1, src), whole)  # another rank, another stream
    plain = prepare_images(images, steps, 0, {**src, "augment": False})
    np.testing.assert_allclose(plain[:, 0], (images / 255.0 - 0.5) / 0.25, rtol=1e-5, atol=1e-5)
