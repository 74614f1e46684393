"""The Grafana dashboard and the Prometheus alert rules refer only to metrics the service defines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "cluster" / "observability"
_SERIES = re.compile(r"\b(ray_qadwh_[a-z_]+)")


def defined_metrics() -> dict:
    """``{name: kind}`` of every metric the serving code creates (ray.serve.metrics)."""
    out = {}
    for f in (ROOT / "qadwh_ray" / "serving").glob("*.py"):
        for kind, name in re.findall(r'\b(Counter|Gauge|Histogram)\(\s*"(qadwh_[a-z_]+)"', f.read_text()):
            out[name] = kind
    return out


def exported_names() -> set:
    """The Prometheus series Ray exports for them (``ray_`` prefix; counter / histogram suffixes)."""
    names = set()
    for name, kind in defined_metrics().items():
        base = "ray_" + name
        names |= {"Counter": {base + "_total"}, "Gauge": {base}, "Histogram": {base + s for s in ("_bucket", "_sum", "_count")}}[kind]
    return names


def queries() -> list:
    dash = json.loads((OBS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), dict)]
    rules = yaml.safe_load((OBS / "prometheus-rules.yaml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return exprs


def test_dashboard_and_rules_use_only_exported_metrics():
    exported = exported_names()
    used = {m for e in queries() for m in _SERIES.findall(e)}
    assert used and used <= exported, sorted(used - exported)
    # every metric the service defines is on the dashboard
    shown = {m.rsplit("_bucket", 1)[0].rsplit("_total", 1)[0].rsplit("_sum", 1)[0].rsplit("_count", 1)[0] for m in used}
    assert {"ray_" + n for n in defined_metrics()} <= shown, sorted({"ray_" + n for n in defined_metrics()} - shown)


def test_dashboard_and_rules_are_well_formed():
    dash = json.loads((OBS / "grafana-dashboard.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] and dash["title"]
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"].count("(") == t["expr"].count(")") for t in p["targets"]), p["title"]
    rules = yaml.safe_load((OBS / "prometheus-rules.yaml").read_text())
    for r in (r for g in rules["groups"] for r in g["rules"]):
        assert set(r) == {"alert", "expr", "for", "labels", "annotations"}, r.get("alert")
        assert r["labels"]["severity"] in ("page", "ticket") and r["annotations"]["summary"]
        assert r["expr"].count("(") == r["expr"].count(")")
