"""Exact weighted top-k search vs FAISS plain Hamming vs a naive numpy baseline.

For every database size and code length, every kind of codes and every weight
regime, in the same process, on the same codes and with the same thread
counts, this measures queries/s of

* ``weighted``: :class:`qadwh_ray.core.search.HashIndex`, exact QaDWH top-k
  (per-query weights), strategy ``auto``;
* ``faiss``: FAISS ``IndexBinaryFlat`` plain-Hamming top-k (the speed the
  paper's "Hamming ranking" would have);
* ``naive``: numpy — database bits unpacked once to float32, then per query a
  matrix–vector product of the linear form and a stable ``argsort``;

single queries and batches, 1 thread and all threads, and the memory of our
index per item. With ``--gpu cuda`` also the index's torch path on that device
(single queries and batches, and a check that its ids and distances equal the
CPU path's), next to the all-threads CPU figures. The two methods are timed in
alternating rounds; a ratio is the median over rounds of the ratio within a
round (the machine is shared: two measurements a few milliseconds apart see the
same load), the queries/s figures are each method's best round.

Codes:

* ``heldout`` (with ``--checkpoint PATH``, one per code length): the database
  is the trained model's codes of the split's 64,000 database images
  (``paper_split`` with the checkpoint's split seed), then of whole augmented
  copies of them (``augment(images, seed)``, seeds 1, 2, ...) up to the
  database size; the queries are the split's held-out query images — never in
  the database, nor augmentations of anything in it. Without a checkpoint, a
  clearly labelled synthetic stand-in, ``clustered``: 10 random cluster
  centres, every item a centre with each bit flipped with probability
  ``--flip`` (0.1).
* ``random``: uniform random codes and queries (the engine's own test: no
  near-duplicates, no early exit).

Weights (per query, ``nbits`` each):

* ``model``: the model's query-adaptive weights of the held-out queries
  (eq. 14; on random codes too). Without a checkpoint: ``softmax(z) W`` with
  ``W ~ lognormal(0, 0.3)`` per class and logits peaked on the query's cluster;
* ``spread``: independent ``lognormal(0, 0.5)`` per bit;
* ``peaked``: class-peaked — per class, a random quarter of the bits weigh 4×
  (times ``lognormal(0, 0.25)`` noise), mixed by ``softmax(4 onehot + N(0, 1))``
  around the query's class (the model's predicted class, or the cluster).

Per workload it also reports the share of items whose exact distance was
computed, the share of blocks scanned (the scan stops once k items at distance
0 are found) and the share of queries whose k-th distance is 0.

Prints progress on stderr and, as its last stdout line, one JSON object.
Run: ``python benchmarks/search_bench.py --sizes 1000000`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time

import numpy as np

K_DEFAULT = 100
WEIGHT_REGIMES = ("model", "spread", "peaked")


def log(msg: str) -> None:
    print(f"[search_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def gpu_name(device):
    if not device:
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() else None


# ----------------------------------------------------------------------------- memory


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- codes and weights


def softmax_rows(z):
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def peaked_mixture(rng, class_w, classes_of_queries):
    """``softmax(4 onehot + N(0, 1)) @ class_w``: weights peaked on each query's class."""
    c = class_w.shape[0]
    z = 4.0 * np.eye(c)[classes_of_queries] + rng.normal(0.0, 1.0, (len(classes_of_queries), c))
    return softmax_rows(z) @ class_w


def spread_weights(rng, nq, nbits):
    return rng.lognormal(0.0, 0.5, (nq, nbits))


def class_peaked_weights(rng, classes_of_queries, nbits, classes=10):
    heavy = rng.random((classes, nbits)) < 0.25
    class_w = rng.lognormal(0.0, 0.25, (classes, nbits)) * np.where(heavy, 4.0, 1.0)
    return peaked_mixture(rng, class_w, classes_of_queries)


def weight_regimes(rng, model_weights, query_classes, nbits) -> dict:
    nq = len(model_weights)
    return {"model": np.asarray(model_weights, dtype=np.float64),
            "spread": spread_weights(rng, nq, nbits),
            "peaked": class_peaked_weights(rng, query_classes, nbits)}


def clustered_codes(rng, n, nbits, flip, centres, chunk=1 << 20):
    out = np.empty((n, nbits // 8), dtype=np.uint8)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        lab = rng.integers(0, centres.shape[0], e - s)
        bits = centres[lab] ^ (rng.random((e - s, nbits)) < flip)
        out[s:e] = np.packbits(bits, axis=1, bitorder="little")
    return out


def synthetic_sets(n, nbits, nq, flip, seed):
    """``{codes kind: (database, queries, model-regime weights, query classes)}`` without a model."""
    rng = np.random.default_rng(seed + nbits)
    centres = rng.integers(0, 2, (10, nbits)).astype(bool)
    class_w = rng.lognormal(0.0, 0.3, (10, nbits))
    db = clustered_codes(rng, n, nbits, flip, centres)
    qlab = rng.integers(0, 10, nq)
    queries = np.packbits(centres[qlab] ^ (rng.random((nq, nbits)) < flip), axis=1, bitorder="little")
    weights = peaked_mixture(rng, class_w, qlab)
    rand_db = rng.integers(0, 256, (n, nbits // 8), dtype=np.uint8)
    rand_q = rng.integers(0, 256, (nq, nbits // 8), dtype=np.uint8)
    rlab = rng.integers(0, 10, nq)
    return {"clustered": (db, queries, weights, qlab),
            "random": (rand_db, rand_q, peaked_mixture(rng, class_w, rlab), rlab)}


def _file_digest(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def model_sets(checkpoint, n, nq, seed, batch_size, cache_dir=None):
    """Held-out workload of a trained checkpoint (module docstring) and the random one.

    Encoding is the slow part on a CPU (~2,900 images/s for the compact CNN on
    2 cores), so with ``cache_dir`` every copy's codes are kept as one file
    under the checkpoint's digest as soon as it is encoded: an interrupted run
    resumes where it stopped, and runs of several sizes share their copies."""
    from tqdm import tqdm

    from qadwh_ray.core.bits import code_bytes
    from qadwh_ray.data.fashion import load_fashion_mnist
    from qadwh_ray.data.split import paper_split
    from qadwh_ray.data.transforms import augment
    from qadwh_ray.model import encode
    from qadwh_ray.model.checkpoint import load_payload, model_from_payload

    payload = load_payload(checkpoint)
    trained = payload.get("train_config") or {}
    if trained.get("dataset", "fashion") != "fashion":
        raise SystemExit(f"{checkpoint} was trained on {trained['dataset']!r}; the held-out workload is Fashion-MNIST's")
    model = model_from_payload(payload)
    nbits = model.config.nbits
    images, labels = load_fashion_mnist()
    split = paper_split(labels, seed=int(trained.get("split_seed", 0)))
    base = images[split.database]
    copies = -(-n // len(base))
    prefix = os.path.join(cache_dir, f"heldout-{_file_digest(checkpoint)}") if cache_dir else None
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
    db = np.empty((n, code_bytes(nbits)), dtype=np.uint8)
    reused = 0
    with tqdm(total=n, desc=f"encode {nbits}-bit database", file=sys.stderr) as bar:
        for aug_seed in range(copies):
            done = aug_seed * len(base)
            take = min(len(base), n - done)
            path = f"{prefix}-copy{aug_seed}.npy" if prefix else None
            if path and os.path.exists(path):
                codes = np.load(path)
                reused += 1
            else:
                batch = base if aug_seed == 0 else augment(base, seed=aug_seed)
                codes = encode(model, batch, batch_size=batch_size).codes
                if path:
                    np.save(path + ".tmp.npy", codes)
                    os.replace(path + ".tmp.npy", path)  # never a half-written copy under the real name
            db[done:done + take] = codes[:take]
            bar.update(take)
    if reused:
        log(f"database codes: {reused} of {copies} copies from {prefix}-copy*.npy")
    query_idx = split.query[np.random.default_rng(seed).permutation(len(split.query))[:nq]]
    enc = encode(model, images[query_idx], batch_size=batch_size)
    classes = enc.logits.argmax(axis=1)
    rng = np.random.default_rng(seed)
    rand_db = rng.integers(0, 256, (n, nbits // 8), dtype=np.uint8)
    rand_q = rng.integers(0, 256, (nq, nbits // 8), dtype=np.uint8)
    sets = {"heldout": (db, enc.codes, enc.qadwh_weights, classes),
            "random": (rand_db, rand_q, enc.qadwh_weights, classes)}
    return nbits, sets


# ----------------------------------------------------------------------------- timing


def timed_rounds(fns: dict, rounds: int) -> dict:
    """Alternate the callables for ``rounds`` rounds: per name ``{"wall": [...], "cpu": [...]}``, seconds per round.

    The CPU time is the calling thread's, only meaningful for 1-thread runs
    (all work in the calling thread); it does not advance while the process
    waits for a core, so it is the figure least disturbed by other load.
    """
    out = {name: {"wall": [], "cpu": []} for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            c0 = time.thread_time()
            t0 = time.perf_counter()
            fn()
            out[name]["wall"].append(time.perf_counter() - t0)
            out[name]["cpu"].append(time.thread_time() - c0)
    return out


def median_speedup(fast: dict, slow: dict, clock: str = "wall") -> float:
    """Median over rounds of ``slow / fast`` seconds within a round (> 1: ``fast`` is faster)."""
    return float(np.median(np.array(slow[clock]) / np.maximum(np.array(fast[clock]), 1e-12)))


class Naive:
    """Unpack once to float32; per query the linear form as a mat-vec, then a stable argsort."""

    def __init__(self, codes):
        self.bits = np.unpackbits(codes, axis=1, bitorder="little").astype(np.float32)

    def search(self, queries, weights, k):
        qb = np.unpackbits(queries, axis=1, bitorder="little").astype(np.float32)
        w = np.asarray(weights, dtype=np.float32)
        coef = w * (1.0 - 2.0 * qb)
        const = (w * qb).sum(axis=1)
        dist = self.bits @ coef.T + const  # (n, nq)
        return np.stack([np.argsort(dist[:, j], kind="stable")[:k] for j in range(dist.shape[1])])

    @property
    def nbytes(self):
        return self.bits.nbytes


def memory_in_child(db, single, single_w, batch, batch_w, k) -> dict:
    """Peak memory of building and searching our index, per item, measured in a fresh process."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name, arr in (("db", db), ("single", single), ("single_w", single_w), ("batch", batch),
                          ("batch_w", batch_w)):
            np.save(os.path.join(tmp, name + ".npy"), arr)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-probe", tmp, "--k", str(k)],
                             capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_probe(tmp: str, k: int) -> dict:
    """Child side of :func:`memory_in_child`.

    The inputs are loaded first (they belong to the caller), the kernels are
    compiled/loaded on a tiny index, then the peak RSS (VmHWM, reset through
    ``/proc/self/clear_refs``) is tracked over ``add`` and single and batched
    searches at 1 and all threads. ``peak_bytes_per_item`` is that peak minus
    the RSS before ``add``, divided by n: the index plus every transient of
    building and searching it.
    """
    from qadwh_ray.core.search import HashIndex

    arrays = {name: np.load(os.path.join(tmp, name + ".npy"))
              for name in ("db", "single", "single_w", "batch", "batch_w")}
    db = arrays["db"]
    n, nbytes = db.shape
    ids = np.arange(n, dtype=np.int64)
    warm = HashIndex(8 * nbytes, device="cpu")
    warm.add(db[:1000], ids[:1000])
    for t in (1, None):
        warm.search(arrays["single"][:1], k, arrays["single_w"][:1], num_threads=t)
        warm.search(arrays["batch"], k, arrays["batch_w"], num_threads=t)
    del warm
    gc.collect()
    rss0 = rss_bytes()
    exact = reset_peak_rss()
    index = HashIndex(8 * nbytes, device="cpu")
    index.add(db, ids)
    gc.collect()
    after_add = rss_bytes() - rss0
    for t in (1, None):
        for i in range(len(arrays["single"])):
            index.search(arrays["single"][i:i + 1], k, arrays["single_w"][i:i + 1], num_threads=t)
        index.search(arrays["batch"], k, arrays["batch_w"], num_threads=t)
    peak = (peak_rss_bytes() if exact else rss_bytes()) - rss0
    target = nbytes + 8
    return {
        "packed_plus_ids_bytes_per_item": target,
        "index_bytes_per_item": round(index.memory_bytes / n, 3),
        "rss_after_add_bytes_per_item": round(after_add / n, 3),
        "peak_bytes_per_item": round(peak / n, 3),
        "peak_is_exact": exact,
        "memory_ratio": round(peak / n / target, 3),
        "faiss_bytes_per_item": nbytes,
    }


# ----------------------------------------------------------------------------- one configuration


def gpu_timings(index, single, single_w, batch, batch_w, k, device, rounds, cpu_threads) -> dict:
    """The index's torch path on ``device`` (``--gpu``): queries/s for single queries and a
    batch, and whether its results equal the CPU path's bit for bit (ids and distances)."""
    index.search(single[:2], k, single_w[:2], device=device)  # upload the codes, warm the kernels
    used = index.last_search.device
    r = timed_rounds({
        "single": lambda: [index.search(single[i:i + 1], k, single_w[i:i + 1], device=device)
                           for i in range(len(single))],
        "batch": lambda: index.search(batch, k, batch_w, device=device),
    }, rounds)
    equal = True
    for q, w in ((single, single_w), (batch, batch_w)):
        want = index.search(q, k, w, num_threads=cpu_threads)
        got = index.search(q, k, w, device=device)
        equal &= bool(np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0]))
    return {"device": used, "single_qps": round(len(single) / min(r["single"]["wall"]), 1),
            "batch_qps": round(len(batch) / min(r["batch"]["wall"]), 1), "equals_cpu": equal}


def search_counters(index, queries, weights, k) -> dict:
    """Work of the auto strategy on these queries, one at a time, 1 thread (module docstring)."""
    evals = scanned = final = 0
    kth = []
    for i in range(len(queries)):
        d, _ = index.search(queries[i:i + 1], k, weights[i:i + 1], num_threads=1)
        info = index.last_search
        evals += info.weighted_evaluations
        scanned += info.two_stage_blocks + info.exhaustive_blocks
        final += info.final_heap_blocks
        kth.append(d[0, min(k, len(index)) - 1])
    return {"exact_fraction": round(evals / (len(queries) * len(index)), 6),
            "blocks_scanned_fraction": round(scanned / max(1, scanned + final), 4),
            "kth_distance_zero_share": round(float(np.mean(np.array(kth) == 0)), 4)}


def bench_workload(index, faiss_index, faiss, codes_kind, regime, queries, weights, args, threads_all) -> dict:
    """One workload (codes kind x weight regime): timings against FAISS, thread scaling, work counters."""
    n, nbits, k = len(index), index.nbits, args.k
    single, single_w = queries[:args.single_queries], weights[:args.single_queries]
    batch, batch_w = queries[:args.batch], weights[:args.batch]
    index.search(single[:2], k, single_w[:2], num_threads=threads_all)  # compile / load kernels outside timing

    def ours_single(t):
        return lambda: [index.search(single[i:i + 1], k, single_w[i:i + 1], num_threads=t)
                        for i in range(len(single))]

    def ours_batch(t):
        return lambda: index.search(batch, k, batch_w, num_threads=t)

    def faiss_single():
        return lambda: [faiss_index.search(single[i:i + 1], k) for i in range(len(single))]

    def faiss_batch():
        return lambda: faiss_index.search(batch, k)

    rows = []
    for t in sorted({1, threads_all}):
        faiss.omp_set_num_threads(t)
        for bs, ours, theirs in ((1, ours_single(t), faiss_single()), (args.batch, ours_batch(t), faiss_batch())):
            r = timed_rounds({"weighted": ours, "faiss": theirs}, args.rounds)
            nq = len(single) if bs == 1 else len(batch)
            row = {"threads": t, "batch": bs,
                   "weighted_qps": round(nq / min(r["weighted"]["wall"]), 1),
                   "faiss_qps": round(nq / min(r["faiss"]["wall"]), 1),
                   "weighted_vs_faiss": round(median_speedup(r["weighted"], r["faiss"]), 3)}
            if t == 1:
                row["weighted_vs_faiss_cpu"] = round(median_speedup(r["weighted"], r["faiss"], "cpu"), 3)
            rows.append(row)
    res = {"codes": codes_kind, "weights": regime, "n": n, "nbits": nbits, "k": k, "timings": rows}
    if threads_all > 1:
        r = timed_rounds({"one": ours_batch(1), "all": ours_batch(threads_all)}, args.rounds)
        res["threads_speedup_batch"] = round(median_speedup(r["all"], r["one"]), 3)
        res["threads_speedup_batch_best"] = round(min(r["one"]["wall"]) / min(r["all"]["wall"]), 3)
    res.update(search_counters(index, single, single_w, k))
    if args.gpu:
        g = gpu_timings(index, single, single_w, batch, batch_w, k, args.gpu, args.rounds, threads_all)
        cpu_all = {row["batch"]: row["weighted_qps"] for row in rows if row["threads"] == threads_all}
        faiss_all = {row["batch"]: row["faiss_qps"] for row in rows if row["threads"] == threads_all}
        g["vs_weighted_cpu_all_threads"] = {"single": round(g["single_qps"] / cpu_all[1], 3),
                                            "batch": round(g["batch_qps"] / cpu_all[args.batch], 3)}
        g["vs_faiss_all_threads"] = {"single": round(g["single_qps"] / faiss_all[1], 3),
                                     "batch": round(g["batch_qps"] / faiss_all[args.batch], 3)}
        res["gpu"] = g
        log(f"gpu: {json.dumps(g)}")
    return res


def naive_figures(db, queries, weights, index, args) -> dict:
    """Queries/s of the naive numpy ranking (1 thread, single queries and a batch) next to ours, same queries."""
    k = args.k
    single, single_w = queries[:args.naive_queries], weights[:args.naive_queries]
    batch, batch_w = queries[:args.batch], weights[:args.batch]
    naive = Naive(db)
    out = {}
    for name, q, w in (("single", single, single_w), ("batch", batch, batch_w)):
        run_naive = ((lambda: [naive.search(q[i:i + 1], w[i:i + 1], k) for i in range(len(q))]) if name == "single"
                     else (lambda: naive.search(q, w, k)))
        run_ours = ((lambda: [index.search(q[i:i + 1], k, w[i:i + 1], num_threads=1) for i in range(len(q))])
                    if name == "single" else (lambda: index.search(q, k, w, num_threads=1)))
        r = timed_rounds({"weighted": run_ours, "naive": run_naive}, 1)
        out[f"naive_{name}_qps"] = round(len(q) / r["naive"]["wall"][0], 2)
        out[f"weighted_vs_naive_{name}"] = round(median_speedup(r["weighted"], r["naive"]), 1)
    del naive
    gc.collect()
    return out


def bench_codes(codes_kind, db, queries, regimes, args, threads_all, faiss) -> list[dict]:
    """Every weight regime on one database; memory, FAISS's Hamming agreement and the naive baseline once."""
    from qadwh_ray.core.search import HashIndex

    n, nbytes = db.shape
    nbits = 8 * nbytes
    t0 = time.perf_counter()
    index = HashIndex(nbits, device="cpu")
    index.add(db, np.arange(n, dtype=np.int64))
    build_seconds = round(time.perf_counter() - t0, 3)
    faiss_index = faiss.IndexBinaryFlat(nbits)
    faiss_index.add(db)
    d_ours, _ = index.search(queries[:4], args.k, mode="hamming", num_threads=1)
    d_faiss, _ = faiss_index.search(queries[:4], args.k)
    hamming_match = bool(np.array_equal(d_ours, d_faiss.astype(np.float64)))
    out = []
    for regime, weights in regimes.items():
        log(f"n={n} nbits={nbits} codes={codes_kind} weights={regime}")
        r = bench_workload(index, faiss_index, faiss, codes_kind, regime, queries, weights, args, threads_all)
        r["build_seconds"] = build_seconds
        r["hamming_distances_match_faiss"] = hamming_match
        log(json.dumps({x: r.get(x) for x in ("codes", "weights", "exact_fraction", "blocks_scanned_fraction",
                                             "kth_distance_zero_share", "threads_speedup_batch")})
            + " " + json.dumps(r["timings"]))
        out.append(r)
    model_w = regimes["model"]
    if n <= args.naive_max_items:
        out[0].update(naive_figures(db, queries, model_w, index, args))
    out[0]["memory"] = memory_in_child(db, queries[:args.single_queries], model_w[:args.single_queries],
                                       queries[:args.batch], model_w[:args.batch], args.k)
    del index, faiss_index
    gc.collect()
    return out


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000000", help="comma-separated database sizes")
    p.add_argument("--bits", default="32,48,64", help="code lengths (synthetic codes)")
    p.add_argument("--checkpoint", action="append", default=[],
                   help="trained model checkpoint for the held-out workload (repeat for several code lengths)")
    p.add_argument("--k", type=int, default=K_DEFAULT)
    p.add_argument("--single-queries", type=int, default=32, help="queries timed one at a time per round")
    p.add_argument("--batch", type=int, default=64, help="queries per batch")
    p.add_argument("--rounds", type=int, default=7, help="alternating timing rounds (ratios: median over rounds)")
    p.add_argument("--flip", type=float, default=0.1, help="bit-flip probability of the synthetic clusters")
    p.add_argument("--naive-max-items", type=int, default=1_000_000)
    p.add_argument("--naive-queries", type=int, default=4)
    p.add_argument("--encode-batch", type=int, default=None, help="images per forward pass (default: encode.default_chunk)")
    p.add_argument("--codes-cache", default=None, help="keep/reuse the checkpoints' database codes in this directory")
    p.add_argument("--gpu", default=None, metavar="DEVICE",
                   help="also time the index's torch path on DEVICE (cuda, cuda:N) and check it equals the CPU path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_probe:
        out = memory_probe(args.memory_probe, args.k)
        print(json.dumps(out))
        return out

    if args.gpu:  # fail before minutes of CPU timings, not after
        from qadwh_ray.core.search import _resolve_device

        try:
            if _resolve_device(args.gpu) == "cpu":
                raise ValueError("it resolves to the CPU path; name a CUDA device (cuda, cuda:N)")
        except (ValueError, RuntimeError) as e:
            p.error(f"--gpu {args.gpu}: {e}")

    import faiss
    import numba

    load_start = os.getloadavg()[0]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    threads_all = int(numba.config.NUMBA_NUM_THREADS)
    nq = max(args.single_queries, args.batch)
    results = []
    for n in sizes:
        configs = []
        if args.checkpoint:
            for ck in args.checkpoint:
                log(f"encoding {n} items with {ck}")
                configs.append(model_sets(ck, n, nq, args.seed, args.encode_batch, args.codes_cache))
        else:
            for nbits in [int(b) for b in args.bits.split(",") if b]:
                log(f"generating {n} synthetic {nbits}-bit codes")
                configs.append((nbits, synthetic_sets(n, nbits, nq, args.flip, args.seed)))
        for nbits, sets in configs:
            for codes_kind, (db, queries, model_w, classes) in sets.items():
                regimes = weight_regimes(np.random.default_rng(args.seed + 1), model_w, classes, nbits)
                results.extend(bench_codes(codes_kind, db, queries, regimes, args, threads_all, faiss))
            del sets
            gc.collect()

    head_n = 1_000_000 if 1_000_000 in sizes else min(sizes)
    head_bits = 64 if any(r["nbits"] == 64 for r in results) else max(r["nbits"] for r in results)

    def find(codes, weights, n=head_n, nbits=head_bits):
        for r in results:
            if (r["codes"], r["weights"], r["n"], r["nbits"]) == (codes, weights, n, nbits):
                return r
        return None

    def vs_faiss(r, threads=1, batch=1):
        """The lower of the wall-clock and CPU-time ratios (1 thread), or the wall-clock one."""
        if r is None:
            return None
        row = next(x for x in r["timings"] if x["threads"] == threads and x["batch"] == batch)
        return min(row["weighted_vs_faiss"], row.get("weighted_vs_faiss_cpu", row["weighted_vs_faiss"]))

    realistic = "heldout" if args.checkpoint else "clustered"
    codes_label = (f"heldout: model checkpoint(s) {args.checkpoint}: database = the split's database images and "
                   "augmented copies of them, queries = the split's held-out query images"
                   if args.checkpoint
                   else f"SYNTHETIC STAND-IN (no --checkpoint): clustered = 10 cluster centres, bit flips p={args.flip}")
    heldout, spread = find("heldout", "model"), find("random", "spread")
    vs_naive = [r[key] for r in results for key in ("weighted_vs_naive_single", "weighted_vs_naive_batch") if key in r]
    summary = {
        "benchmark": "search",
        "command": "python benchmarks/search_bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "codes": codes_label,
        "k": args.k,
        "threads_all": threads_all,
        "timing": f"{args.rounds} alternating rounds; ratios are medians over rounds of the ratio within a round, "
                  f"q/s the best round; *_cpu: CPU time of the calling thread (1-thread runs); "
                  f"{args.single_queries} single queries, batches of {args.batch}; "
                  f"load average at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f}",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "gpu": gpu_name(args.gpu)},
        "headline": f"n={head_n}, {head_bits} bits, 1 thread, single queries, top {args.k}; weighted_vs_faiss_* is "
                    "the lower of the median wall-clock and CPU-time ratios",
        "weighted_vs_faiss_heldout": vs_faiss(heldout),
        "weighted_vs_faiss_random_spread": vs_faiss(spread),
        "threads_speedup_batch_random_spread": spread.get("threads_speedup_batch") if spread else None,
        "threads_speedup_batch_heldout": heldout.get("threads_speedup_batch") if heldout else None,
        "weighted_vs_naive_min": min(vs_naive) if vs_naive else None,
        "memory_ratio_max": max(r["memory"]["memory_ratio"] for r in results if "memory" in r),
        # every workload at n=head_n, 1 thread, single queries, with its work counters
        "by_workload": {
            f"{r['nbits']}/{r['codes']}/{r['weights']}": {
                "weighted_vs_faiss": vs_faiss(r), "exact_fraction": r["exact_fraction"],
                "blocks_scanned_fraction": r["blocks_scanned_fraction"],
                "kth_distance_zero_share": r["kth_distance_zero_share"],
                "threads_speedup_batch": r.get("threads_speedup_batch"),
                "threads_speedup_batch_best": r.get("threads_speedup_batch_best")}
            for r in results if r["n"] == head_n
        },
        "realistic_codes_kind": realistic,
        "results": results,
    }

    def meets(value, ok):
        return None if value is None else bool(ok(value))  # None: not measured in this run

    summary["targets"] = {
        "weighted_vs_faiss_heldout>=1.5": meets(summary["weighted_vs_faiss_heldout"], lambda v: v >= 1.5),
        "weighted_vs_faiss_random_spread>=0.75": meets(summary["weighted_vs_faiss_random_spread"], lambda v: v >= 0.75),
        "threads_speedup_batch_random_spread>=1.8": meets(summary["threads_speedup_batch_random_spread"],
                                                          lambda v: v >= 1.8),
        "weighted_vs_naive>=20": meets(summary["weighted_vs_naive_min"], lambda v: v >= 20),
        "memory_ratio<=1.2": meets(summary["memory_ratio_max"], lambda v: v <= 1.2),
        "gpu_equals_cpu": all(r["gpu"]["equals_cpu"] for r in results) if args.gpu else None,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
