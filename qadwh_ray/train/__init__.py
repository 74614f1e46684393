"""Ray Train: data-parallel QaDWH training (DDP on GPUs or CPUs) with distributed triplet sampling.

``train_on_ray(cfg, storage_path, run_name)`` is the entry point; the CLI
(``qadwh train``) and ``jobs/train.py`` call it. Imports of Ray stay inside
this package (DESIGN.md §6). Attributes load lazily, so the Ray Data tasks
that import :mod:`qadwh_ray.train.data` do not pay for torch.
"""

__all__ = ["TrainRunInfo", "default_storage", "train_on_ray"]


def __getattr__(name: str):
    if name in __all__:
        from qadwh_ray.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'qadwh_ray.train' has no attribute {name!r}")
