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
