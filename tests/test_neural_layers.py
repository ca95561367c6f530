"""Neural building blocks: KDEF loss against the worked case, CIN shapes and a hand case, AutoInt's
attention, model smoke, every model starting at the training base rate."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from remedi_spark.models.neural.base import Batch, build_config
from remedi_spark.models.neural.layers import CompressedInteractionNet, CrossNet, FieldSelfAttention, FMInteraction
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


SMALL_CONFIGS = {"mlp": {"emb_dim": 4, "hidden": [16, 16, 16]}, "deepfm": {"emb_dim": 4, "hidden": [16, 16]},
                 "xdeepfm": {"emb_dim": 4, "hidden": [16], "cin_layers": [4, 4]},
                 "autoint": {"emb_dim": 4, "attention_layers": 2, "heads": 2, "attention_dim": 4, "hidden": [16]},
                 "kdef": {"emb_dim": 4, "subnets": ["mlp", "cross", "cin", "fm"], "hidden": [16], "cin_layers": [4]},
                 "kaml": {"emb_dim": 4, "hidden": [16], "tower_hidden": [8]},
                 "hm3": {"emb_dim": 4, "hidden": [16], "tower_hidden": [8]}}
FLAT = {"kaml": {"shared": False}, "hm3": {"hierarchical": False}}


def _mean_probability(model, rows=4000, seed=0):
    from remedi_spark.models.neural.loop import predict_logits

    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(rows, 6)).astype(np.float32)
    ids = rng.integers(0, 5, size=(rows, 3)).astype(np.int64)
    return float((1 / (1 + np.exp(-predict_logits(model, dense, ids).astype(np.float64)))).mean())


def _log_odds(p):
    return float(np.log(p / (1 - p)))


def test_every_zoo_model_has_a_starting_config():
    assert set(SMALL_CONFIGS) == set(MODELS)


@pytest.mark.parametrize("base_rate", [0.004, 0.25])
@pytest.mark.parametrize("name,variant", [*((n, "default") for n in sorted(MODELS)), *((n, "flat") for n in FLAT)])
def test_a_fresh_model_predicts_the_base_rate_on_random_input(name, variant, base_rate):
    """Mean predicted probability within 0.3 in log-odds of the base rate: PyTorch's default init (p ≈ 0.5)
    is > 1 away from either rate, and KAML's and HM3's former fixed start (1%) > 0.9 from both."""
    from remedi_spark.models.neural.loop import make_module

    cfg = {**SMALL_CONFIGS[name], **(FLAT[name] if variant == "flat" else {})}
    for seed in (1, 2):
        model = make_module(name, cfg, [5, 5, 5], 6, seed=seed, base_rate=base_rate)
        assert _log_odds(_mean_probability(model, seed=seed)) == pytest.approx(_log_odds(base_rate), abs=0.3)


def test_without_a_base_rate_the_output_is_not_at_it():
    """The check above can fail: the same model built without ``base_rate`` is far from 0.4%."""
    from remedi_spark.models.neural.loop import make_module

    model = make_module("mlp", SMALL_CONFIGS["mlp"], [5, 5, 5], 6, seed=1)
    assert abs(_log_odds(_mean_probability(model)) - _log_odds(0.004)) > 3


def test_train_in_process_starts_from_the_training_labels_base_rate():
    """The first steps then learn ranking: after one warm-up-only epoch the mean prediction is still near
    the base rate (7.5%), with the positives ranked above the negatives."""
    from remedi_spark.models.neural.loop import make_module, train_in_process

    rng = np.random.default_rng(4)
    n = 4000
    dense = rng.normal(size=(n, 6)).astype(np.float32)
    ids = rng.integers(0, 5, size=(n, 3)).astype(np.int64)
    y = (rng.random(n) < 1 / (1 + np.exp(-(2 * dense[:, 0] - 3.5)))).astype(np.float32)
    params = {"epochs": 1, "batch_size": 200, "lr": 1e-3, "patience": 2, "grad_clip": 10.0, "seed": 3}
    model = make_module("mlp", SMALL_CONFIGS["mlp"], [5, 5, 5], 6, seed=3)
    result = train_in_process(model, (dense, ids, y), params, (dense, ids, y))
    assert result["base_rate"] == pytest.approx(float(y.mean()))
    model.load_state_dict(result["state"])
    assert _log_odds(_mean_probability(model)) == pytest.approx(_log_odds(y.mean()), abs=0.5)
    assert result["valid_auc"] > 0.75


def test_self_attention_rows_sum_to_one_and_follow_the_fields():
    torch.manual_seed(0)
    att = FieldSelfAttention(input_dim=6, attention_dim=3, heads=2)
    fields = torch.randn(4, 5, 6)
    weights = att.attention_weights(fields)
    assert weights.shape == (4, 2, 5, 5)
    assert torch.allclose(weights.sum(dim=-1), torch.ones(4, 2, 5), atol=1e-6)
    out = att(fields)
    assert out.shape == (4, 5, 6) and (out >= 0).all()
    # no positional term: permuting the fields permutes the output the same way
    order = torch.tensor([3, 0, 4, 1, 2])
    assert torch.allclose(att(fields[:, order]), out[:, order], atol=1e-5)


def test_self_attention_hand_case_one_field_attends_to_itself():
    att = FieldSelfAttention(input_dim=2, attention_dim=2, heads=1, residual=True)
    with torch.no_grad():
        att.value.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        att.residual.weight.copy_(torch.eye(2) * 2)
    x = torch.tensor([[[1.0, 3.0]]])  # one field: its only attention weight is 1
    assert att(x).tolist() == [[[1.0 + 2.0, max(0.0, -3.0 + 6.0)]]]
    no_res = FieldSelfAttention(input_dim=2, attention_dim=2, heads=1, residual=False)
    with torch.no_grad():
        no_res.value.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    assert no_res(x).tolist() == [[[1.0, 0.0]]]  # ReLU of (1, −3)


def test_autoint_attention_lets_a_pair_of_fields_interact():
    """AutoInt learns y = 1 iff two categorical fields agree (a pure interaction no first-order model
    sees): validation AUC > 0.9 after a few epochs."""
    from remedi_spark.models.neural.loop import make_module, train_in_process

    rng = np.random.default_rng(5)
    n = 6000
    ids = rng.integers(1, 4, size=(n, 2)).astype(np.int64)
    dense = rng.normal(size=(n, 1)).astype(np.float32)
    y = (ids[:, 0] == ids[:, 1]).astype(np.float32)
    cfg = {"emb_dim": 4, "attention_layers": 1, "heads": 2, "attention_dim": 4}
    model = make_module("autoint", cfg, [4, 4], 1, seed=0)
    params = {"epochs": 6, "batch_size": 128, "lr": 1e-2, "patience": 3, "grad_clip": 10.0, "seed": 0}
    result = train_in_process(model, (dense[:5000], ids[:5000], y[:5000]), params, (dense[5000:], ids[5000:], y[5000:]))
    assert result["valid_auc"] > 0.9
