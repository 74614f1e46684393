"""Ray Train: data-parallel QaDWH training (DDP on GPUs or CPUs) with distributed triplet sampling.

``train_on_ray(cfg, storage_path, run_name)`` is the entry point; the CLI
(``qadwh train``) and ``jobs/train.py`` call it. Imports of Ray stay inside
this package (docs/architecture.md, 'The layers'). Attributes load lazily, so the Ray Data tasks
that import :mod:`qadwh_ray.ray_train.input` do not pay for torch.
"""

__all__ = ["TrainRunInfo", "default_storage", "train_on_ray"]


def __getattr__(name: str):
    if name in __all__:
        from qadwh_ray.ray_train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'qadwh_ray.ray_train' has no attribute {name!r}")
