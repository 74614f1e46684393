"""Exact weighted top-k search vs FAISS plain Hamming vs a naive numpy baseline.

For every database size, code length and kind of codes, in the same process,
on the same codes and with the same thread counts, this measures queries/s of

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
alternating rounds and each keeps its best round (the machine is shared;
best-of-rounds is the least disturbed figure); the median is reported too.

Codes:

* ``realistic``: with ``--checkpoint PATH`` (repeatable, one per code
  length), the trained model's codes of the 70,000 real Fashion-MNIST images
  and of deterministically augmented copies (``augment(images, seed)``,
  seeds 1, 2, ...) up to the database size; queries are augmented images
  with an unused seed and their query-adaptive weights come from the model.
  With ``--index URI`` (repeatable), the codes of a published index, e.g. one
  that ``qadwh index --source fashion-augmented:N`` built (real images, then
  chunk-seeded augmentations), and queries from the checkpoint its manifest
  names. Without either, a clearly labelled synthetic stand-in: 10 random
  cluster centres, every item a centre with each bit flipped with
  probability ``--flip`` (0.1), query weights ``softmax(z) W`` from a random
  class-weight matrix ``W ~ lognormal(0, 0.3)`` and logits peaked on the
  query's cluster (``z = 4*onehot + N(0, 1)``).
* ``random``: uniform random codes (the worst case for the Hamming bound),
  with the same weight model.

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


# ----------------------------------------------------------------------------- codes


def weight_model(rng: np.random.Generator, nbits: int, classes: int = 10):
    return rng.lognormal(0.0, 0.3, (classes, nbits))


def synthetic_weights(rng, class_w, labels):
    classes = class_w.shape[0]
    z = 4.0 * np.eye(classes)[labels] + rng.normal(0.0, 1.0, (len(labels), classes))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return (p @ class_w).astype(np.float32)


def clustered_codes(rng, n, nbits, flip, centres, chunk=1 << 20):
    out = np.empty((n, nbits // 8), dtype=np.uint8)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        lab = rng.integers(0, centres.shape[0], e - s)
        bits = centres[lab] ^ (rng.random((e - s, nbits)) < flip)
        out[s:e] = np.packbits(bits, axis=1, bitorder="little")
    return out


def synthetic_sets(n, nbits, nq, flip, seed):
    rng = np.random.default_rng(seed + nbits)
    centres = rng.integers(0, 2, (10, nbits)).astype(bool)
    class_w = weight_model(rng, nbits)
    db = clustered_codes(rng, n, nbits, flip, centres)
    qlab = rng.integers(0, 10, nq)
    qbits = centres[qlab] ^ (rng.random((nq, nbits)) < flip)
    queries = np.packbits(qbits, axis=1, bitorder="little")
    weights = synthetic_weights(rng, class_w, qlab)
    rand_db = rng.integers(0, 256, (n, nbits // 8), dtype=np.uint8)
    rand_q = rng.integers(0, 256, (nq, nbits // 8), dtype=np.uint8)
    rand_w = synthetic_weights(rng, class_w, rng.integers(0, 10, nq))
    return {"realistic": (db, queries, weights), "random": (rand_db, rand_q, rand_w)}


def _file_digest(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def model_sets(checkpoint, n, nq, seed, batch_size, cache_dir=None):
    """Codes of real + augmented Fashion-MNIST images from a trained checkpoint: the
    70,000 real images, then whole augmented copies (seeds 1, 2, ...), cut at ``n``.

    Encoding is the slow part on a CPU (~2,900 images/s for the compact CNN on 2
    cores: ~57 min for 10M), so with ``cache_dir`` every copy's codes are kept as
    one file under the checkpoint's digest as soon as it is encoded: an interrupted
    run resumes where it stopped, and a 1M and a 10M run share their first copies."""
    from tqdm import tqdm

    from qadwh_ray.core.bits import code_bytes
    from qadwh_ray.data.fashion import load_fashion_mnist
    from qadwh_ray.data.transforms import augment
    from qadwh_ray.model import encode, load_checkpoint

    model = load_checkpoint(checkpoint)
    nbits = model.config.nbits
    images, _ = load_fashion_mnist()
    copies = -(-n // len(images))
    prefix = os.path.join(cache_dir, f"codes-{_file_digest(checkpoint)}") if cache_dir else None
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
    db = np.empty((n, code_bytes(nbits)), dtype=np.uint8)
    reused = 0
    with tqdm(total=n, desc=f"encode {nbits}-bit database", file=sys.stderr) as bar:
        for aug_seed in range(copies):
            done = aug_seed * len(images)
            take = min(len(images), n - done)
            path = f"{prefix}-copy{aug_seed}.npy" if prefix else None
            if path and os.path.exists(path):
                codes = np.load(path)
                reused += 1
            else:
                batch = images if aug_seed == 0 else augment(images, seed=aug_seed)
                codes = encode(model, batch, batch_size=batch_size).codes
                if path:
                    np.save(path + ".tmp.npy", codes)
                    os.replace(path + ".tmp.npy", path)  # never a half-written copy under the real name
            db[done:done + take] = codes[:take]
            bar.update(take)
    if reused:
        log(f"database codes: {reused} of {copies} copies from {prefix}-copy*.npy")
    return nbits, _with_queries(model, images, db, nq, seed, batch_size)


def index_sets(root, n, nq, seed, batch_size):
    """Codes of the first ``n`` items of a published index (verified on load), e.g. one
    that ``qadwh index --source fashion-augmented:N`` built — the production encoder's
    output — with queries encoded by the checkpoint its manifest names."""
    from qadwh_ray.data.fashion import load_fashion_mnist
    from qadwh_ray.index import open_index
    from qadwh_ray.model import load_checkpoint

    reader = open_index(root)
    if reader.manifest.num_items < n:
        raise SystemExit(f"--index {root} holds {reader.manifest.num_items} items; --sizes asks for {n}")
    data = reader.read_all()
    db = np.ascontiguousarray(data.codes[:n])
    del data
    model = load_checkpoint(reader.manifest.checkpoint["uri"])
    log(f"database codes: {n} of {reader.manifest.num_items} items of {reader!r}")
    images, _ = load_fashion_mnist()
    return model.config.nbits, _with_queries(model, images, db, nq, seed, batch_size)


def _with_queries(model, images, db, nq, seed, batch_size):
    """The realistic set (``db`` + the model's codes and weights of augmented query
    images with an unused seed) and the uniform random set of the same shape."""
    from qadwh_ray.data.transforms import augment
    from qadwh_ray.model import encode

    n, nbits = db.shape[0], model.config.nbits
    rng = np.random.default_rng(seed)
    qimg = augment(images[rng.choice(len(images), nq, replace=False)], seed=10**6 + seed)
    enc = encode(model, qimg, batch_size=batch_size)
    rand_db = rng.integers(0, 256, (n, nbits // 8), dtype=np.uint8)
    rand_q = rng.integers(0, 256, (nq, nbits // 8), dtype=np.uint8)
    return {"realistic": (db, enc.codes, enc.qadwh_weights), "random": (rand_db, rand_q, enc.qadwh_weights)}


# ----------------------------------------------------------------------------- timing


def timed_rounds(fns: dict, rounds: int) -> dict:
    """Alternate the callables for ``rounds`` rounds.

    Per name: (best wall seconds, median wall seconds, best CPU seconds of the
    calling thread). The CPU time is only meaningful for 1-thread runs (all
    work in the calling thread); it does not advance while the process waits
    for a core, so it is the figure least disturbed by other load.
    """
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            c0 = time.thread_time()
            t0 = time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.thread_time() - c0)
    return {name: (min(wall[name]), float(np.median(wall[name])), min(cpu[name])) for name in fns}


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
    return {"device": used, "single_qps": round(len(single) / r["single"][0], 1),
            "batch_qps": round(len(batch) / r["batch"][0], 1), "equals_cpu": equal}


def bench_config(name, db, queries, weights, args, threads_all, faiss):
    from qadwh_ray.core.search import HashIndex

    n, nbytes = db.shape
    nbits = 8 * nbytes
    k = args.k
    single = queries[: args.single_queries]
    single_w = weights[: args.single_queries]
    batch = queries[: args.batch]
    batch_w = weights[: args.batch]
    res = {"codes": name, "n": n, "nbits": nbits, "k": k}

    # --- our index (memory is measured in a fresh process: memory_probe)
    t0 = time.perf_counter()
    index = HashIndex(nbits, device="cpu")
    index.add(db, np.arange(n, dtype=np.int64))
    res["build_seconds"] = round(time.perf_counter() - t0, 3)
    index.search(single[:1], k, single_w[:1])  # compile / load kernels outside timing
    index.search(single[:2], k, single_w[:2], num_threads=threads_all)

    faiss_index = faiss.IndexBinaryFlat(nbits)
    faiss_index.add(db)

    def ours_single(t):
        return lambda: [index.search(single[i:i + 1], k, single_w[i:i + 1], num_threads=t)
                        for i in range(len(single))]

    def ours_batch(t):
        return lambda: index.search(batch, k, batch_w, num_threads=t)

    def faiss_single():
        return lambda: [faiss_index.search(single[i:i + 1], k) for i in range(len(single))]

    def faiss_batch():
        return lambda: faiss_index.search(batch, k)

    timings = {}
    for t in sorted({1, threads_all}):
        faiss.omp_set_num_threads(t)
        r = timed_rounds({"weighted": ours_single(t), "faiss": faiss_single()}, args.rounds)
        timings[(t, 1)] = {m: tuple(len(single) / x for x in v) for m, v in r.items()}
        r = timed_rounds({"weighted": ours_batch(t), "faiss": faiss_batch()}, args.rounds)
        timings[(t, args.batch)] = {m: tuple(len(batch) / x for x in v) for m, v in r.items()}

    # Work counters of the auto strategy (all single queries, 1 thread).
    index.search(single, k, single_w, num_threads=1)
    info = index.last_search
    res["reranked_fraction"] = round(info.weighted_evaluations / (len(single) * n), 5)
    res["two_stage_block_fraction"] = round(
        info.two_stage_blocks / max(1, info.two_stage_blocks + info.exhaustive_blocks), 4)

    # Sanity: plain-Hamming top-k distances equal FAISS's.
    d_ours, _ = index.search(single[:4], k, mode="hamming", num_threads=1)
    d_faiss, _ = faiss_index.search(single[:4], k)
    res["hamming_distances_match_faiss"] = bool(np.array_equal(d_ours, d_faiss.astype(np.float64)))

    # --- naive baseline (1 thread, where memory allows)
    naive_single = naive_batch = None
    if n <= args.naive_max_items:
        naive = Naive(db)
        nq_naive = min(args.naive_queries, len(single))
        t0 = time.perf_counter()
        for i in range(nq_naive):
            naive.search(single[i:i + 1], single_w[i:i + 1], k)
        naive_single = nq_naive / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        naive.search(batch, batch_w, k)
        naive_batch = len(batch) / (time.perf_counter() - t0)
        del naive
        gc.collect()

    if args.gpu:
        g = gpu_timings(index, single, single_w, batch, batch_w, k, args.gpu, args.rounds, threads_all)
        cpu_all = {bs: timings[(threads_all, bs)]["weighted"][0] for bs in (1, args.batch)}
        faiss_all = {bs: timings[(threads_all, bs)]["faiss"][0] for bs in (1, args.batch)}
        g["vs_weighted_cpu_all_threads"] = {"single": round(g["single_qps"] / cpu_all[1], 3),
                                            "batch": round(g["batch_qps"] / cpu_all[args.batch], 3)}
        g["vs_faiss_all_threads"] = {"single": round(g["single_qps"] / faiss_all[1], 3),
                                     "batch": round(g["batch_qps"] / faiss_all[args.batch], 3)}
        res["gpu"] = g
        log(f"gpu: {json.dumps(g)}")

    rows = []
    for t in sorted({1, threads_all}):
        for bs in (1, args.batch):
            tm = timings[(t, bs)]
            row = {
                "threads": t, "batch": bs,
                "weighted_qps": round(tm["weighted"][0], 1), "faiss_qps": round(tm["faiss"][0], 1),
                "weighted_qps_median": round(tm["weighted"][1], 1), "faiss_qps_median": round(tm["faiss"][1], 1),
                "weighted_vs_faiss": round(tm["weighted"][0] / tm["faiss"][0], 3),
            }
            if t == 1:
                row["weighted_qps_cpu"] = round(tm["weighted"][2], 1)
                row["faiss_qps_cpu"] = round(tm["faiss"][2], 1)
                row["weighted_vs_faiss_cpu"] = round(tm["weighted"][2] / tm["faiss"][2], 3)
            naive_qps = (naive_single if bs == 1 else naive_batch) if t == 1 else None
            row["naive_qps"] = round(naive_qps, 2) if naive_qps else None
            row["weighted_vs_naive"] = round(tm["weighted"][0] / naive_qps, 1) if naive_qps else None
            rows.append(row)
    res["timings"] = rows
    res["memory"] = memory_in_child(db, single, single_w, batch, batch_w, k)
    del index, faiss_index
    gc.collect()
    return res


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000000", help="comma-separated database sizes")
    p.add_argument("--bits", default="32,48,64", help="code lengths (synthetic codes)")
    p.add_argument("--checkpoint", action="append", default=[],
                   help="trained model checkpoint for realistic codes (repeat for several code lengths)")
    p.add_argument("--index", action="append", default=[],
                   help="published index (path or s3://) whose codes are the realistic database, e.g. built by "
                        "`qadwh index --source fashion-augmented:N`; queries come from its manifest's checkpoint (repeatable)")
    p.add_argument("--k", type=int, default=K_DEFAULT)
    p.add_argument("--single-queries", type=int, default=32, help="queries timed one at a time per round")
    p.add_argument("--batch", type=int, default=64, help="queries per batch")
    p.add_argument("--rounds", type=int, default=7, help="alternating timing rounds (best round kept)")
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
        if args.checkpoint or args.index:
            for root in args.index:
                log(f"reading {n} items of the index at {root}")
                configs.append(index_sets(root, n, nq, args.seed, args.encode_batch))
            for ck in args.checkpoint:
                log(f"encoding {n} items with {ck}")
                nbits, sets = model_sets(ck, n, nq, args.seed, args.encode_batch, args.codes_cache)
                configs.append((nbits, sets))
        else:
            for nbits in [int(b) for b in args.bits.split(",") if b]:
                log(f"generating {n} synthetic {nbits}-bit codes")
                configs.append((nbits, synthetic_sets(n, nbits, nq, args.flip, args.seed)))
        for nbits, sets in configs:
            for name in ("realistic", "random"):
                db, queries, weights = sets[name]
                log(f"n={n} nbits={nbits} codes={name}")
                r = bench_config(name, db, queries, weights, args, threads_all, faiss)
                log(json.dumps({x: r[x] for x in ("codes", "n", "nbits", "reranked_fraction")})
                    + " " + json.dumps(r["timings"]))
                results.append(r)
            del sets
            gc.collect()

    head_n = 1_000_000 if 1_000_000 in sizes else min(sizes)

    def pick(codes, n=head_n, nbits=64, threads=1, batch=1, key="weighted_vs_faiss"):
        for r in results:
            if r["codes"] == codes and r["n"] == n and r["nbits"] == nbits:
                for row in r["timings"]:
                    if row["threads"] == threads and row["batch"] == batch:
                        return row[key]
        return None

    def lower(a, b):
        vals = [v for v in (a, b) if v is not None]
        return min(vals) if vals else None

    realistic_label = (f"model checkpoint(s) {args.checkpoint}, index(es) {args.index}: real + augmented Fashion-MNIST"
                       if args.checkpoint or args.index
                       else f"SYNTHETIC STAND-IN (no --checkpoint): 10 cluster centres, bit flips p={args.flip}, "
                            "weights softmax(z) W with W ~ lognormal(0, 0.3)")
    vs_naive = [row["weighted_vs_naive"] for r in results for row in r["timings"] if row["weighted_vs_naive"]]
    summary = {
        "benchmark": "search",
        "command": "python benchmarks/search_bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "realistic_codes": realistic_label,
        "k": args.k,
        "threads_all": threads_all,
        "timing": f"best of {args.rounds} alternating rounds (wall clock; *_cpu: CPU time of the calling "
                  f"thread, 1-thread runs); {args.single_queries} single queries, batches of {args.batch}; "
                  f"load average at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f}",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "gpu": gpu_name(args.gpu)},
        "headline": f"n={head_n}, 64 bits, 1 thread, single queries; weighted_vs_faiss_* is the lower of the "
                    "wall-clock and CPU-time ratios",
        "weighted_vs_faiss_realistic": lower(pick("realistic"), pick("realistic", key="weighted_vs_faiss_cpu")),
        "weighted_vs_faiss_random": lower(pick("random"), pick("random", key="weighted_vs_faiss_cpu")),
        "weighted_vs_faiss_realistic_wall": pick("realistic"),
        "weighted_vs_faiss_random_wall": pick("random"),
        "weighted_vs_faiss_realistic_cpu": pick("realistic", key="weighted_vs_faiss_cpu"),
        "weighted_vs_faiss_random_cpu": pick("random", key="weighted_vs_faiss_cpu"),
        "weighted_vs_naive_realistic": pick("realistic", key="weighted_vs_naive"),
        "weighted_vs_naive_random": pick("random", key="weighted_vs_naive"),
        "weighted_vs_naive_min": min(vs_naive) if vs_naive else None,
        "memory_ratio_max": max(r["memory"]["memory_ratio"] for r in results),
        # the headline ratios at every measured code length (n=head_n, 1 thread, single queries)
        "weighted_vs_faiss_by_bits": {
            str(b): {c: lower(pick(c, nbits=b), pick(c, nbits=b, key="weighted_vs_faiss_cpu")) for c in ("realistic", "random")}
            for b in sorted({r["nbits"] for r in results if r["n"] == head_n})
        },
        "results": results,
    }
    def meets(value, ok):
        return None if value is None else bool(ok(value))  # None: not measured in this run

    summary["targets"] = {
        "weighted_vs_faiss_realistic>=1.0": meets(summary["weighted_vs_faiss_realistic"], lambda v: v >= 1.0),
        "weighted_vs_faiss_random>=0.5": meets(summary["weighted_vs_faiss_random"], lambda v: v >= 0.5),
        "weighted_vs_naive>=20": meets(summary["weighted_vs_naive_min"], lambda v: v >= 20),
        "memory_ratio<=1.2": meets(summary["memory_ratio_max"], lambda v: v <= 1.2),
        "gpu_equals_cpu": all(r["gpu"]["equals_cpu"] for r in results) if args.gpu else None,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
