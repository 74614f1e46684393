"""Every compared method trains on Ray Train: two DDP workers, the same train_step as the local trainer."""

import dataclasses

import pytest

from qadwh_ray.training.config import TrainConfig
from qadwh_ray.training.datasets import limit_training, load_retrieval_data
from qadwh_ray.model.checkpoint import load_checkpoint
from qadwh_ray.ray_train import train_on_ray

pytestmark = pytest.mark.ray

NETWORKS = {"ninh-paper": "HashingNetwork", "isdh": "HashingNetwork", "doh": "OrdinalHashingNetwork",
            "adsq": "AsymmetricHashingNetwork"}


@pytest.fixture(scope="module")
def small_data():
    data = limit_training(load_retrieval_data("fashion", split_seed=0, val_fraction=0.1), 96, seed=0)
    return dataclasses.replace(data, val_pos=data.val_pos[:24])


def test_each_method_trains_two_steps_on_two_workers(ray_cluster, small_data, tmp_path):
    for method, network in NETWORKS.items():
        cfg = TrainConfig(method=method, nbits=8, classes_per_batch=4, images_per_class=4, epochs=1, max_steps=2,
                          num_workers=2, cpus_per_worker=0.5, seed=1)
        info = train_on_ray(cfg, str(tmp_path / "runs"), method, data=small_data, max_failures=0,
                            collective_timeout_s=120, progress=False, log=lambda *_: None)
        assert info.steps == info.total_steps == 2, method
        last = info.history[-1]
        assert last["loss"] > 0 and 0 <= last["val_map"] <= 1, method
        model = load_checkpoint(info.checkpoint_uri)
        assert type(model).__name__ == network and model.config.nbits == 8, method
