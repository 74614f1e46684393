"""Where a model's retrieval MAP is lost: classifier posteriors vs continuous codes vs binary codes.

On the paper-protocol Fashion-MNIST split, for one checkpoint, prints the
classification accuracy on the queries and the database and the MAP over the
whole database of three rankings: the dot product of the softmax posteriors
(what the classifier knows), the Euclidean distance of the sigmoid activations
``h`` (the embedding before quantisation) and plain Hamming on the codes.
Used for the diagnosis in docs/results.md::

    python scripts/code_gap.py runs/exp-cos90/model.pt
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--split-seed", type=int, default=0)
    args = p.parse_args(argv)

    from qadwh_ray.core.hamming import hamming_distances
    from qadwh_ray.core.metrics import mean_average_precision
    from qadwh_ray.training.datasets import load_retrieval_data
    from qadwh_ray.model import encode, load_checkpoint
    from qadwh_ray.model.encode import preprocess

    data = load_retrieval_data("fashion", split_seed=args.split_seed)
    model = load_checkpoint(args.checkpoint).eval()
    q, d = encode(model, data.query_images), encode(model, data.db_images)
    ql, dl = data.query_labels, data.db_labels

    def accuracy(logits, labels):
        return float(labels[np.arange(len(logits)), logits.argmax(1)].mean())

    @torch.inference_mode()
    def activations(images):
        return torch.cat([model(preprocess(model, images[s:s + 512])).h for s in range(0, len(images), 512)]).numpy()

    pq, pd = (torch.softmax(torch.from_numpy(x.logits), 1).numpy() for x in (q, d))
    hq, hd = activations(data.query_images), activations(data.db_images)
    sq_dist = (hq ** 2).sum(1)[:, None] + (hd ** 2).sum(1)[None] - 2 * hq @ hd.T
    result = {
        "checkpoint": args.checkpoint,
        "query_accuracy": round(accuracy(q.logits, ql), 4),
        "database_accuracy": round(accuracy(d.logits, dl), 4),
        "map_posterior_dot": round(float(mean_average_precision(-(pq @ pd.T), ql, dl)), 4),
        "map_activations_euclidean": round(float(mean_average_precision(sq_dist, ql, dl)), 4),
        "map_codes_hamming": round(float(mean_average_precision(hamming_distances(q.codes, d.codes), ql, dl)), 4),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
