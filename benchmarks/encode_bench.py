"""Encoder throughput by forward-pass chunk size: ``qadwh_ray.model.encode``'s CPU
default (``CPU_CHUNK``) against the old fixed 1,024 and the sizes around it; and by
weight layout: the channels-last model that ``load_checkpoint`` returns against
the same model in the contiguous (NCHW) layout, both at the default chunk; and
the cost of ``flip_average`` (each image and its mirror in one forward pass).

In one process, on the same images (real Fashion-MNIST, then deterministic
augmentations) and the same checkpoint, for each torch thread count, the chunk
sizes are timed in alternating rounds and each keeps its best round (the
machine is shared). The codes of every chunk size are compared with the
default's: the chunk size must not change a single bit.

Prints one JSON object as its last line; ``default_vs_1024_threads_<t>`` is
images/s at the default chunk ÷ images/s at 1,024, and
``channels_last_vs_contiguous_threads_<t>`` the layout ratio,
``flip_average_vs_single_threads_<t>`` flip-averaged ÷ single-view images/s. Example::

    python benchmarks/encode_bench.py --checkpoint runs/qadwh48/model.pt --images 8192 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: an untrained 48-bit compact model)")
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--chunks", default="64,128,256,512,1024")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    import copy

    import torch

    from qadwh_ray.data.fashion import fashion_augmented_images
    from qadwh_ray.model import ModelConfig, build_model, encode, load_checkpoint
    from qadwh_ray.model.encode import CPU_CHUNK

    if args.checkpoint:
        model, name = load_checkpoint(args.checkpoint), os.path.basename(args.checkpoint)
    else:
        torch.manual_seed(0)
        model, name = build_model(ModelConfig(nbits=48)), "compact-48bit (untrained)"
        model = model.to(memory_format=torch.channels_last).eval()  # as load_checkpoint returns it
    contiguous = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    # the middle of the fashion-augmented database: augmented images, as most of a large one
    images, _ = fashion_augmented_images(np.arange(70_000, 70_000 + args.images))
    chunks = sorted({int(c) for c in args.chunks.split(",")} | {CPU_CHUNK, 1024})
    result: dict = {"benchmark": "encode_chunk", "model": name, "images": args.images, "default_chunk": CPU_CHUNK,
                    "rounds": args.rounds, "images_per_s": {},
                    "images_per_s_by_layout": {}, "layout_rows_differing": 0}
    # single-view encoding everywhere but the flip_average variant, whatever the checkpoint says
    reference = encode(model, images, flip_average=False).codes
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        best = {c: 0.0 for c in chunks}
        for _ in range(args.rounds):
            for c in chunks:
                encode(model, images[:c], batch_size=c, flip_average=False)  # warm this shape
                t = time.perf_counter()
                codes = encode(model, images, batch_size=c, flip_average=False).codes
                best[c] = max(best[c], args.images / (time.perf_counter() - t))
                if not np.array_equal(codes, reference):
                    raise SystemExit(f"chunk {c} changed the codes ({int((codes != reference).any(1).sum())} rows differ)")
        result["images_per_s"][str(threads)] = {str(c): round(v, 1) for c, v in best.items()}
        result[f"default_vs_1024_threads_{threads}"] = round(best[CPU_CHUNK] / best[1024], 3)
        layout = {"channels_last": 0.0, "contiguous": 0.0, "flip_average": 0.0}
        variants = (("channels_last", model, False), ("contiguous", contiguous, False), ("flip_average", model, True))
        for _ in range(args.rounds):
            for kind, net, flip in variants:
                encode(net, images[:CPU_CHUNK], flip_average=flip)  # warm this variant
                t = time.perf_counter()
                codes = encode(net, images, flip_average=flip).codes
                layout[kind] = max(layout[kind], args.images / (time.perf_counter() - t))
                if not flip:  # flip averaging changes codes by design
                    differing = int((codes != reference).any(1).sum())
                    result["layout_rows_differing"] = max(result["layout_rows_differing"], differing)
        result["images_per_s_by_layout"][str(threads)] = {k: round(v, 1) for k, v in layout.items()}
        result[f"channels_last_vs_contiguous_threads_{threads}"] = round(layout["channels_last"] / layout["contiguous"], 3)
        result[f"flip_average_vs_single_threads_{threads}"] = round(layout["flip_average"] / layout["channels_last"], 3)
        print(f"threads {threads}: " + ", ".join(f"{c}: {v:.0f}/s" for c, v in best.items())
              + f"; channels-last {layout['channels_last']:.0f}/s vs contiguous {layout['contiguous']:.0f}/s",
              file=sys.stderr, flush=True)
    result["codes_identical_across_chunks"] = True
    result["host"] = {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                      "python": platform.python_version(), "torch": torch.__version__}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
