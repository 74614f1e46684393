import pytest

from qadwh_ray.training.config import TrainConfig, load_config, parse_overrides
from qadwh_ray.data.catalog import DatasetInfo

FASHION_INFO = DatasetInfo("fashion", "fashion", tuple(str(i) for i in range(10)), False, "L", (28, 28), 70000)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("nbits: 32\nlr: 0.01\nmethod: qadwh-ref\n")
    cfg = load_config(str(path), ["epochs=3", "lr=1", "pretrained=null"])
    assert (cfg.nbits, cfg.lr, cfg.epochs, cfg.method, cfg.pretrained) == (32, 1.0, 3, "qadwh-ref", None)
    assert isinstance(cfg.lr, float)
    assert load_config(str(path), ["flip_average=true"]).model_config(FASHION_INFO, 28).flip_average  # reaches the checkpoint


@pytest.mark.parametrize(
    "text,match",
    [("nbitz: 32\n", "unknown config keys: nbitz"), ("nbits: 0\n", "between 1 and 4096 bits"),
     ("triplet_form: cosine\n", "unknown triplet_form 'cosine' \\(now `method`"), ("- 1\n", "YAML mapping"),
     ("method: nin\n", "unknown method 'nin'; choose one of qadwh, qadwh-ref, ninh"),
     ("method: dwh\n", "is not trained on its own: DWH is the qadwh model ranked with one fixed weight vector"),
     ("method: itq\n", "ITQ is fitted on a trained qadwh model's features"),
     ("method: ninh\ncls_weight: 0\n", "NINH without it is method ninh-paper"),
     ("method: doh\nsymbol_bits: 3\n", "symbol_bits must be one of"),
     ("method: doh\nnbits: 12\nsymbol_bits: 8\n", "symbol_bits must be one of"),
     ("method: doh\nnbits: 12\nsymbol_bits: 4\nquantization_weight: -1\n", "quantization_weight must be non-negative"),
     ("method: ninh\ntriplet_form: paper\n", "contradicts method 'ninh'"),
     ("lr_schedule: linear\n", "unknown lr_schedule 'linear'"),
     ("triplet_average: hardest\n", "unknown triplet_average 'hardest'"),
     ("erase_probability: 1.5\n", "erase_probability must be in"),
     ("augment: false\nerase_probability: 0.5\n", "erase_probability needs augment"),
     ("uniform_weight_share: -0.1\n", "uniform_weight_share must be in"),
     ("method: ninh\nuniform_weight_share: 0.5\n", "method ninh has no weights to mix"),
     ("method: isdh\nuniform_weight_share: 0.5\n", "method isdh has no weights to mix"),
     ('flip_average: "maybe"\n', "flip_average must be true or false"),
     ("epochs: 10\nweight_warmup_epochs: 10\n", "weight_warmup_epochs must be an integer in"),
     ("weight_warmup_epochs: 1.5\n", "weight_warmup_epochs must be an integer in"),
     ("weight_lr_scale: 0\n", "weight_lr_scale must be a positive number"),
     ('weight_lr_scale: "10"\n', "weight_lr_scale must be a positive number")],
)
def test_bad_yaml_is_a_clear_error(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(str(path))


def test_bad_overrides():
    with pytest.raises(ValueError, match="unknown config key 'lrr'"):
        parse_overrides(["lrr=0.1"])
    with pytest.raises(ValueError, match="expected"):
        parse_overrides(["epochs=many"])
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["epochs"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config("/nonexistent/nope.yaml")


def test_round_trip_dict():
    cfg = TrainConfig(nbits=24, margin=3.0)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_lr_schedules_step_and_cosine():
    import torch

    from qadwh_ray.training.loop import make_scheduler

    def rates(cfg):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        sched, out = make_scheduler(opt, cfg), []
        for _ in range(cfg.epochs):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    step = rates(TrainConfig(lr=1.0, epochs=4, lr_step_epochs=2, lr_gamma=0.1))
    assert step == pytest.approx([1.0, 1.0, 0.1, 0.1])
    cosine = rates(TrainConfig(lr=1.0, epochs=4, lr_schedule="cosine"))
    assert cosine == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])


def test_every_shipped_config_loads():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert files
    for path in files:
        load_config(str(path))  # unknown keys or bad values would raise, naming the file's problem


def test_old_triplet_form_configs_load_as_their_method(tmp_path):
    path = tmp_path / "old.yaml"
    for form, method in (("paper", "qadwh"), ("reference", "qadwh-ref"), ("plain", "ninh")):
        path.write_text(f"nbits: 16\ntriplet_form: {form}\n")
        assert load_config(str(path)).method == method
        assert load_config(None, [f"triplet_form={form}"]).method == method
        assert TrainConfig.from_dict({"triplet_form": form}).method == method
    path.write_text("triplet_form: paper\n")
    assert load_config(str(path), ["method=ninh-paper"]).method == "ninh-paper"  # an override replaces the file's
    assert "triplet_form" not in TrainConfig().to_dict()  # one key: method


def test_the_method_decides_the_network():
    doh = TrainConfig(method="doh", nbits=12, symbol_bits=2).model_config(FASHION_INFO, 28)
    assert (doh.architecture, doh.symbol_bits) == ("ordinal", 2)
    assert TrainConfig(method="adsq").model_config(FASHION_INFO, 28).architecture == "asymmetric"
    for m in ("qadwh", "qadwh-ref", "ninh", "ninh-paper", "isdh"):
        mc = TrainConfig(method=m).model_config(FASHION_INFO, 28)
        assert (mc.architecture, mc.symbol_bits) == ("two-stream", 1)
