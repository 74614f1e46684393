"""Index builds fold the update log: API changes carried into every next version, images
re-encoded for a new model, codes of another model dropped and listed, the log truncated."""

import numpy as np
import pytest
from index_helpers import local_codes, save_model

from qadwh_ray.data.transforms import encode_png
from qadwh_ray.index import IndexStore, open_index
from qadwh_ray.index.update_log import LogEntry, UpdateLog
from qadwh_ray.index_build import BuildOptions, CheckOptions, reindex
from qadwh_ray.index_build.fold import read_folded_changes

pytestmark = pytest.mark.ray

FAST = dict(block_rows=200, batch_size=200, actors=1, shards=2)
CHECKS = dict(map_queries=100, sample_queries=4, k=20)


def _items(root):
    d = open_index(root).read_all()
    return {int(i): (c.tobytes().hex(), np.flatnonzero(lab).tolist()) for i, c, lab in zip(d.ids, d.codes, d.labels)}


def test_builds_fold_the_update_log(ray_cluster, tmp_path):
    from qadwh_ray.data.fashion import load_fashion_mnist

    root = str(tmp_path / "index")
    a = save_model(tmp_path / "a.pt", seed=0)
    v1 = reindex(a, "fashion-augmented:300", root, BuildOptions(**FAST), CheckOptions(**CHECKS))
    store = IndexStore(root)
    m1 = v1.manifest
    assert m1.updates == {"log_position": 0}
    sha_a = m1.checkpoint["sha256"]
    before = _items(root)
    images, _ = load_fashion_mnist()
    img = images[69_000]
    log = UpdateLog(root)
    existing = sorted(before)[:3]
    code_a = local_codes(a, img[None])[0].tobytes().hex()
    log.append([
        LogEntry(0, "put", 900_001, code="a5c3", labels=[2], checkpoint=sha_a),  # a code from model a, no image
        LogEntry(0, "put", 900_002, code=code_a, labels=[3], checkpoint=sha_a, image=log.put_image(encode_png(img))),
        LogEntry(0, "delete", existing[0]),
    ])
    log.append([LogEntry(0, "put", existing[1], code="0f0f", labels=[1], checkpoint=sha_a),
                LogEntry(0, "delete", 900_001), LogEntry(0, "put", 900_001, code="ffff", labels=[4], checkpoint=sha_a)])

    # same model: every change folded as it is; nothing truncated yet (v1 folded nothing)
    v2 = reindex(a, "fashion-augmented:300", root, BuildOptions(**FAST), CheckOptions(**CHECKS))
    got = _items(root)
    u = v2.manifest.updates
    assert u["log_position"] == 6 and u["puts"] == 3 and u["deletes"] == 1 and u["dropped_count"] == 0 and u["truncated_to"] == 0
    assert got[900_001] == ("ffff", [4]) and got[900_002] == (code_a, [3]) and got[existing[1]] == ("0f0f", [1])
    assert existing[0] not in got and len(got) == len(before) + 1 and v2.manifest.num_items == len(got)
    assert UpdateLog(root).read(0)[1] == 6  # kept: rolling back to v1 replays them

    # a new model: the imaged put is re-encoded, the code-only puts are dropped (listed), the delete stays;
    # the log is truncated to what v2's predecessor... (v2 itself folded up to 6: truncated now)
    log.append([LogEntry(0, "delete", existing[2])])
    b = save_model(tmp_path / "b.pt", seed=1)
    v3 = reindex(b, "fashion-augmented:300", root, BuildOptions(**FAST), CheckOptions(**{**CHECKS, "queries": None}))
    got = _items(root)
    u = v3.manifest.updates
    assert u["log_position"] == 7 and u["reencoded"] == 1 and u["dropped_count"] == 2 and u["truncated_to"] == 6
    assert {d["id"] for d in u["dropped"]} == {900_001, existing[1]} and "without an image" in u["dropped"][0]["reason"]
    assert got[900_002] == (local_codes(b, img[None])[0].tobytes().hex(), [3])
    assert 900_001 not in got and existing[0] not in got and existing[2] not in got and existing[1] not in got
    assert UpdateLog(root).truncated_position() == 6 and UpdateLog(root).read(6)[1] == 7
    carried = {e.id: e for e in read_folded_changes(store, v3.manifest)}
    assert carried[900_002].checkpoint == v3.manifest.checkpoint["sha256"] and carried[existing[0]].op == "delete"
