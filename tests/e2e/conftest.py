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
