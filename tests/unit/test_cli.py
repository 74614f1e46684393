import json
import subprocess
import sys

from qadwh_ray.cli import main


def test_data_command_prints_the_paper_split_and_saves_it(tmp_path, capsys):
    assert main(["data", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test queries 1000, test database 64000" in out
    assert "1000 validation queries against a validation database of 63000" in out
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["seed"] == 0 and len(split["query"]) == 1000


def test_bad_config_fails_fast_with_one_clear_line(tmp_path, capsys):
    assert main(["train-local", "--set", "nbits=0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "between 1 and 4096 bits" in err and "Traceback" not in err
    assert not (tmp_path / "model.pt").exists()
    assert main(["train-local", "--set", "bogus=1", "--out", str(tmp_path)]) == 2
    assert "unknown config key 'bogus'" in capsys.readouterr().err


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "qadwh_ray.cli", "--help"], capture_output=True, text=True, check=True)
    for sub in ("train-local", "evaluate-local", "data", "run"):
        assert sub in out.stdout


def test_methods_are_named_once_and_the_former_forms_still_parse(tmp_path, capsys):
    from qadwh_ray.cli import _methods, build_parser

    parse = build_parser().parse_args
    assert _methods(parse(["evaluate", "--checkpoints", "x"]), "") == ["ninh", "qadwh", "qadwh-ref"]
    assert _methods(parse(["run"]), "ninh,qadwh") == ["ninh", "qadwh"]
    assert _methods(parse(["evaluate", "--checkpoints", "x", "--methods", "isdh,doh"]), "") == ["isdh", "doh"]
    assert _methods(parse(["evaluate", "--checkpoints", "x", "--forms", "plain,paper,reference"]), "") == [
        "ninh", "qadwh", "qadwh-ref"]
    assert parse(["evaluate", "--checkpoints", "x"]).on == "validation"
    assert main(["evaluate", "--checkpoints", str(tmp_path), "--methods", "dwh"]) == 2
    assert "DWH is the qadwh model ranked with one fixed weight vector" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoints", str(tmp_path), "--forms", "hamming"]) == 2
    assert "--forms 'hamming'" in capsys.readouterr().err


def test_seeds_command_summarises_one_report_per_training_seed(tmp_path, capsys):
    def report(name, seed, qadwh, ninh, on="test"):
        body = {"dataset": "fashion", "evaluated_on": on, "runs": [{"method": "qadwh", "nbits": 12, "seed": seed}],
                "metrics": [{"nbits": 12, "method": "QaDWH", "map_all": qadwh},
                            {"nbits": 12, "method": "NINH", "map_all": ninh}]}
        (tmp_path / name).write_text(json.dumps(body))
        return str(tmp_path / name)

    a, b, c = report("a.json", 0, 0.80, 0.78), report("b.json", 1, 0.82, 0.81), report("c.json", 2, 0.79, 0.79)
    assert main(["seeds", a, b, c]) == 0
    out = capsys.readouterr().out
    assert "fashion, test queries; training seeds [0, 1, 2]" in out and "| 12 | QaDWH − NINH | 3 |" in out
    assert main(["seeds", a, report("d.json", 0, 0.8, 0.7)]) == 2
    assert "a second report for training seed 0" in capsys.readouterr().err
    assert main(["seeds", a, report("e.json", 3, 0.8, 0.7, on="validation")]) == 2
    assert "rank different query sets" in capsys.readouterr().err
