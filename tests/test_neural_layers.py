"""Neural building blocks: KDEF loss against the worked case, CIN shapes and a hand case, model smoke."""
import json
from pathlib import Path

import pytest
import torch

from remedi_spark.models.neural.base import Batch, build_config
from remedi_spark.models.neural.layers import CompressedInteractionNet, CrossNet, FMInteraction
from remedi_spark.models.neural.zoo import MODELS
from remedi_spark.models.neural.zoo.kdef import kdef_loss

CASE = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "kdef_loss_case.json"


def test_kdef_loss_reproduces_the_worked_case():
    case = json.loads(CASE.read_text())
    out = kdef_loss(torch.tensor(case["logits"], dtype=torch.float64), torch.tensor(case["labels"], dtype=torch.float64))
    for key, want in (("ctr", "ctr_term"), ("kd", "kd_term"), ("dml", "dml_term"), ("loss", "loss")):
        assert out[key].item() == pytest.approx(case[want], rel=1e-6), key
    assert out["examination"].tolist() == pytest.approx(case["examination_scores"], rel=1e-6)
    assert torch.softmax(-out["examination"], 0).tolist() == pytest.approx(case["lambda"], rel=1e-6)


def test_kdef_loss_with_one_network_is_plain_bce():
    z = torch.tensor([[0.3], [-1.2]], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0], dtype=torch.float64)
    out = kdef_loss(z, y)
    assert out["dml"].item() == 0 and out["kd"].item() == pytest.approx(0.0, abs=1e-15)
    assert out["loss"].item() == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], y).item())


def test_cin_shapes_and_a_hand_case():
    cin = CompressedInteractionNet(num_fields=3, layer_sizes=[4, 2])
    assert cin(torch.randn(5, 3, 7)).shape == (5, 1)
    assert cin.pooled(torch.randn(5, 3, 7)).shape == (5, 6)
    # one field, one map, conv weight w and bias b: X¹ = w · x⁰ ⊙ x⁰ + b, pooled = Σ_d X¹_d
    tiny = CompressedInteractionNet(num_fields=1, layer_sizes=[1])
    with torch.no_grad():
        tiny.convs[0].weight.fill_(2.0)
        tiny.convs[0].bias.fill_(0.5)
    x = torch.tensor([[[1.0, 2.0, 3.0]]])
    assert tiny.pooled(x).item() == pytest.approx(2.0 * (1 + 4 + 9) + 0.5 * 3)


def test_fm_and_cross_hand_cases():
    assert FMInteraction()(torch.ones(2, 3, 4)).tolist() == [[12.0], [12.0]]
    cross = CrossNet(2, num_layers=1)
    with torch.no_grad():
        cross.weights[0].weight.copy_(torch.tensor([[1.0, 1.0]]))
    x = torch.tensor([[1.0, 2.0]])
    assert cross(x).tolist() == [[1.0 * 3 + 1.0, 2.0 * 3 + 2.0]]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains_a_step(name):
    torch.manual_seed(0)
    cls = MODELS[name]
    small = {"emb_dim": 4, "hidden": [8], "dropout": 0.0}
    if name in ("xdeepfm", "kdef"):
        small["cin_layers"] = [3]
    model = cls([5, 3], 4, build_config(cls.Config, small))
    label = torch.tensor([1.0, 0, 0, 1, 0, 0])
    batch = Batch(torch.randn(6, 4), torch.randint(0, 3, (6, 2)), label)
    if getattr(cls, "needs_horizons", False):  # KAML: per-horizon labels, NaN = not observed
        horizons = torch.stack([label, label, torch.full((6,), float("nan"))], dim=1)
        batch = Batch(batch.dense, batch.cat_ids, label, horizons=horizons)
    if cls.aux_labels:  # HM3: one column per auxiliary label, NaN = unknown
        aux = torch.full((6, len(cls.aux_labels)), float("nan"))
        aux[:, 0] = label
        batch = Batch(batch.dense, batch.cat_ids, label, aux=aux)
    out = model(batch)
    assert out["logit"].shape == (6,)
    loss = model.compute_loss(out, batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="unknown config keys"):
        build_config(cls.Config, {"emb_dimm": 4})
