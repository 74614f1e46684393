"""Fixtures of the end-to-end tests.

The serving tests (test_serving_api.py and test_serving_browser.py) share one
deployed application over one small index for the whole session: deploying
costs tens of seconds, so it is done once (helpers in serving_support.py).
"""

import numpy as np
import pytest

SERVING_TOKEN = "s3cr3t-token-for-tests"
SERVING_ITEMS = 3000


@pytest.fixture(scope="session")
def serving_index(tmp_path_factory):
    """A 3,000-item Fashion-MNIST index in 2 shards (random rows) and its checkpoint."""
    import serving_support as S

    d = tmp_path_factory.mktemp("serving-index")
    ck = S.make_checkpoint(str(d / "model.pt"))
    rng = np.random.default_rng(7)
    rows = np.sort(rng.choice(70000, SERVING_ITEMS, replace=False)).astype(np.int64)
    return S.build_index(str(d / "index"), ck, rows)


@pytest.fixture(scope="session")
def serving_api(ray_cluster, serving_index, tmp_path_factory):
    """The serving application over ``serving_index`` with bearer-token auth, at route prefix /."""
    import requests

    import serving_support as S

    d = tmp_path_factory.mktemp("serving-api")
    tok = d / "token"
    tok.write_text(SERVING_TOKEN + "\n")
    name = "qadwh-api"
    base = S.deploy(S.app_args(serving_index.root, auth_token_file=str(tok), max_body_bytes=256 * 1024), name, "/")
    sess = requests.Session()
    sess.headers["Authorization"] = f"Bearer {SERVING_TOKEN}"
    yield {"base": base, "fx": serving_index, "s": sess, "token": SERVING_TOKEN, "name": name}
    S.teardown(name)


@pytest.fixture(scope="session")
def serving_rgb12(ray_cluster, tmp_path_factory):
    """The paper's 12 bits on an RGB image folder whose 5 classes are not Fashion-MNIST's
    (index_helpers.rgb_folder): 40 items in 2 shards, each stored with its file as source,
    served without auth at route prefix /rgb12 beside ``serving_api``."""
    from index_helpers import rgb_12bit_model, rgb_folder

    import serving_support as S
    from qadwh_ray.model import encode, load_checkpoint
    from qadwh_ray.index import checkpoint_record, write_index
    from qadwh_ray.model.checkpoint import load_payload

    d = tmp_path_factory.mktemp("serving-rgb12")
    folder = str(d / "clothes")
    names, files = rgb_folder(folder)
    paths = list(files)
    pixels = np.stack([files[p][1] for p in paths])
    labels = np.eye(len(names), dtype=np.uint8)[[files[p][0] for p in paths]]
    ck = rgb_12bit_model(d / "m12.pt", pixels, len(names))
    codes = encode(load_checkpoint(ck), pixels).codes
    ids = np.arange(len(paths), dtype=np.int64)
    root = str(d / "index")
    version = write_index(
        root, ids, codes, labels, num_shards=2, checkpoint=checkpoint_record(load_payload(ck)),
        sources=[{"kind": "folder", "uri": folder, "rows": len(paths), "mode": "RGB"}],
        item_sources=paths, class_names=names,
    ).version
    name = "qadwh-rgb12"
    base = S.deploy(S.app_args(root), name, "/rgb12")
    yield {"base": base, "root": root, "version": version, "checkpoint": ck, "ids": ids, "codes": codes,
           "labels": labels, "pixels": pixels, "names": names}
    S.teardown(name)
