"""The CMIM loss (Shang et al. 2022, Eq. 10-14) and its memory bank."""

import math

import pytest
import torch

from cmim_dense import create_model
from cmim_dense.binary import binary_sign
from cmim_dense.losses import CMIMLoss, MemoryBank, critic_logits, layer_weights, nce_loss
from cmim_dense.losses.cmim import running_log_mean
from cmim_dense.methods import CMIMConfig
from cmim_dense.models import Tap, collect_taps


def test_critic_logits_paper_example() -> None:
    a_f = torch.tensor([[0.3, -0.4, -0.6], [0.6, -0.9, 0.7]])
    assert torch.allclose(critic_logits(a_f, tau=1.0), torch.tensor([[1.3, 0.8], [0.1, 2.2]]))
    assert torch.allclose(critic_logits(a_f, tau=0.5), torch.tensor([[2.6, 1.6], [0.2, 4.4]]))


def test_nce_loss_hand_computed_three_sample_batch() -> None:
    # a_3 = (-0.2, 0.1, 0.5) added to the paper's example; in-batch negatives: N = 2, M = 3.
    # Scores by hand: row 1 [1.3, 0.8, -0.8], row 2 [0.1, 2.2, 0.2], row 3 [-1.3, -0.8, 0.8].
    a_f = torch.tensor([[0.3, -0.4, -0.6], [0.6, -0.9, 0.7], [-0.2, 0.1, 0.5]])
    scores = critic_logits(a_f, 1.0)
    assert torch.allclose(scores, torch.tensor([[1.3, 0.8, -0.8], [0.1, 2.2, 0.2], [-1.3, -0.8, 0.8]]))
    positive = scores.diagonal()
    negatives = scores[~torch.eye(3, dtype=torch.bool)].view(3, 2)
    # -(1/3) sum_i [log h(s_ii) + sum_{j != i} log(1 - h(s_ij))], h(s) = e^s / (e^s + 2/3)
    assert nce_loss(positive, negatives, noise=2 / 3).item() == pytest.approx(1.7864599619508015, rel=1e-6)


def test_layer_weights_favour_later_layers() -> None:
    assert layer_weights(4, 2.0) == [0.25, 0.5, 1.0, 2.0]


def indexed_bank(size: int, seed: int = 1) -> MemoryBank:
    """A bank whose row i is (i, 0): a drawn negative's first coordinate names its row."""
    bank = MemoryBank(size=size, dim=2, normalize=False, seed=seed)
    bank.values = torch.stack([torch.arange(size, dtype=torch.float32), torch.zeros(size)], dim=1)
    return bank


def test_bank_negatives_exclude_the_anchor_and_cover_every_other_row() -> None:
    """``MemoryBank.sample`` itself, on a bank whose rows name their index: 16 draws for each of 200
    anchors (40 per row) never return the anchor's own row, and each of the 4 other rows gets about a
    quarter of an anchor's 640 draws (160 expected, binomial sd 11; bounds 110..210 are 4.5 sd).

    Catches: offsets drawn from 0 (the anchor is its own negative one time in 5), an off-by-one range
    that never reaches row i - 1, offsets not taken modulo the bank size (IndexError), negatives drawn
    for the wrong anchor, float16 negatives handed to the critic."""
    bank = indexed_bank(5)
    anchors = torch.arange(5).repeat(40)
    drawn = bank.sample(anchors, 16)
    assert drawn.shape == (200, 16, 2) and drawn.dtype == torch.float32
    rows = drawn[..., 0].long()
    assert not (rows == anchors[:, None]).any()
    for anchor in range(5):
        counts = torch.bincount(rows[anchors == anchor].flatten(), minlength=5)
        others = counts[torch.arange(5) != anchor]
        assert counts[anchor] == 0 and ((others > 110) & (others < 210)).all(), (anchor, counts.tolist())


def test_class_aware_negatives_avoid_the_anchor_class() -> None:
    """With labels set, 50 negatives each for anchors of classes 0, 1 and 2 never share the anchor's
    class, while without labels the same bank does draw same-class rows (the test can see them).

    Catches: labels ignored, the comparison made against the negative's own index instead of its
    class, redrawn negatives not written back."""
    bank = indexed_bank(6)
    classes = torch.tensor([0, 0, 1, 1, 2, 2])
    anchors = torch.tensor([0, 2, 4])
    plain = bank.sample(anchors, 50)[..., 0].long()
    assert (classes[plain] == classes[anchors][:, None]).any()
    bank.set_labels(classes)
    drawn = bank.sample(anchors, 50)[..., 0].long()
    assert not (classes[drawn] == classes[anchors][:, None]).any()
    with pytest.raises(ValueError, match="need 6 labels"):
        bank.set_labels(torch.zeros(5, dtype=torch.long))


def test_bank_update_is_a_normalised_momentum_average() -> None:
    bank = MemoryBank(size=4, dim=2, momentum=0.5, normalize=True)
    bank.values[:] = torch.tensor([[1.0, 0.0]] * 4)
    bank.update(torch.tensor([2]), torch.tensor([[0.0, 1.0]]))
    assert bank.values[2].tolist() == pytest.approx([math.sqrt(0.5), math.sqrt(0.5)])
    assert bank.values[1].tolist() == [1.0, 0.0]
    raw = MemoryBank(size=4, dim=2, momentum=0.25, normalize=False)
    raw.values[:] = 2.0
    raw.update(torch.tensor([0, 3]), torch.tensor([[6.0, 6.0], [-2.0, 2.0]]))
    assert raw.values.tolist() == [[5.0, 5.0], [2.0, 2.0], [2.0, 2.0], [-1.0, 2.0]]


def test_float16_bank_stores_half_precision_and_hands_out_float32() -> None:
    """A float16 bank stores its rows in float16 (half a float32 bank's bytes), hands the critic float32
    negatives, and its momentum update equals the float32 bank's to float16 rounding; CMIMLoss passes
    ``bank_dtype`` to every site's bank.

    Catches: the dtype ignored (float32 storage, twice the memory on ImageNet), half-precision
    negatives (a dtype clash in the critic's product), an update computed or stored in the wrong
    precision, a CMIMLoss that drops ``bank_dtype``."""
    half, full = MemoryBank(1000, 128, dtype=torch.float16, seed=2), MemoryBank(1000, 128, seed=2)
    assert half.values.dtype == torch.float16 and half.nbytes == full.nbytes // 2 == 1000 * 128 * 2
    assert torch.allclose(half.values.float(), full.values, atol=1e-3)
    assert half.sample(torch.tensor([3, 7]), 4).dtype == torch.float32
    new = torch.randn(2, 128)
    for bank in (half, full):
        bank.update(torch.tensor([3, 7]), new)
    assert half.values.dtype == torch.float16
    assert torch.allclose(half.values[[3, 7]].float(), full.values[[3, 7]], atol=2e-3)
    assert not torch.allclose(full.values[3], MemoryBank(1000, 128, seed=2).values[3])  # the update did move it
    loss_fn = CMIMLoss({"a": 8, "b": 16}, dataset_size=10, config=CMIMConfig(n_nce=4), bank_dtype=torch.float16)
    assert {bank.values.dtype for bank in loss_fn.banks.values()} == {torch.float16}


def test_bank_state_round_trip_gives_same_negatives() -> None:
    a = MemoryBank(10, 4, seed=3)
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in a.state_dict().items()}
    first = a.sample(torch.tensor([1, 2]), 5)
    b = MemoryBank(10, 4, seed=99)
    b.load_state_dict(state)
    assert torch.equal(b.sample(torch.tensor([1, 2]), 5), first)


def test_loss_falls_when_binary_and_latent_of_a_sample_align() -> None:
    config = CMIMConfig(lam=1.0, tau=1.0, n_nce=4)
    loss_fn = CMIMLoss({"site": 3}, dataset_size=8, config=config, embed="none", site_dims={"site": 12})
    latent = torch.randn(8, 3, 2, 2)
    indices = torch.arange(8)
    for _ in range(3):  # fill the bank with these latents
        loss_fn({"site": Tap("site", latent, torch.where(latent >= 0, 1.0, -1.0))}, indices)
    aligned = loss_fn({"site": Tap("site", latent, torch.where(latent >= 0, 1.0, -1.0))}, indices).total
    flipped = loss_fn({"site": Tap("site", latent, torch.where(latent >= 0, -1.0, 1.0))}, indices).total
    assert aligned < flipped


def test_cmim_on_a_binary_resnet_trains_backbone_and_heads() -> None:
    model = create_model("resnet18", "irnet+cmim", num_classes=3)
    config = CMIMConfig(n_nce=8)
    channels = {"layer3.1.conv2": 256, "layer4.1.conv2": 512}
    loss_fn = CMIMLoss(channels, dataset_size=20, config=config)
    with collect_taps(model, list(channels)) as taps:
        model(torch.randn(4, 3, 32, 32))
    out = loss_fn(taps, torch.tensor([0, 5, 9, 13]))
    assert torch.isfinite(out.total) and set(out.per_layer) == set(channels)
    out.total.backward()
    assert model.layer3[1].conv2.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in loss_fn.parameters())
    bank = loss_fn.banks["layer4.1.conv2"].values
    assert torch.allclose(bank.norm(dim=1), torch.ones(20), atol=1e-5)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="beta .* must be a finite number > 1"):
        CMIMConfig(beta=1.0)
    for bad in ({"lam": float("nan")}, {"lam": float("inf")}, {"tau": float("nan")}, {"beta": float("inf")}):
        with pytest.raises(ValueError, match="must be a finite number"):
            CMIMConfig(**bad)
    with pytest.raises(ValueError, match="embed"):
        CMIMLoss({"s": 4}, 10, CMIMConfig(), embed="linear")


def test_crd_normalizer_is_fixed_after_the_first_batch_and_saved() -> None:
    config = CMIMConfig(tau=0.5, n_nce=3)
    loss_fn = CMIMLoss({"s": 2}, dataset_size=6, config=config, normalizer="crd")
    tap = Tap("s", torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3).sign())
    assert torch.isnan(loss_fn.log_z).all()
    loss_fn({"s": tap}, torch.arange(4))
    first = loss_fn.log_z.clone()
    loss_fn({"s": Tap("s", tap.latent * 3, tap.binary)}, torch.arange(4))
    assert torch.equal(loss_fn.log_z, first) and torch.isfinite(first).all()
    assert torch.equal(loss_fn.state_dict()["log_z"], first)
    literal = CMIMLoss({"s": 2}, 6, config, normalizer="none")
    literal({"s": tap}, torch.arange(4))
    assert torch.isnan(literal.log_z).all()


def test_running_mean_in_log_space() -> None:
    old, new = torch.tensor(math.log(2.0)), torch.tensor(math.log(10.0))
    assert torch.allclose(running_log_mean(old, new, 0.75), torch.tensor(math.log(0.75 * 2 + 0.25 * 10)))
    assert torch.equal(running_log_mean(old, new, 0.0), new)


def test_running_normalizer_keeps_the_loss_bounded_when_the_bank_collapses() -> None:
    """Once every bank row is the same embedding, a Z frozen on the random first bank puts all
    negatives at h ~ 1 and the summed negative term explodes; a running Z follows the scores."""
    torch.manual_seed(0)
    config = CMIMConfig(tau=0.1, n_nce=64, layers="stages")
    latent = torch.randn(1, 8, 2, 2).expand(16, -1, -1, -1) + 0.01 * torch.randn(16, 8, 2, 2)
    tap = {"s": Tap("s", latent, binary_sign(latent))}
    losses = {}
    for normalizer in ("crd", "running"):
        torch.manual_seed(1)
        loss_fn = CMIMLoss({"s": 8}, dataset_size=256, config=config, normalizer=normalizer, momentum=0.0)
        for step in range(16):  # 16 x 16 indices: every bank row replaced by the collapsed embedding
            value = loss_fn(tap, torch.arange(step * 16, step * 16 + 16)).total.item()
        losses[normalizer] = value
    # perfectly confusable negatives: h = 1/(N+1) each, loss = log(N+1) + N log(1 + 1/N) ~ log(N+1) + 1
    # (one tapped site: Eq. 14 weighs it beta)
    assert losses["running"] / (config.lam * config.beta) < math.log(config.n_nce + 1) + 1.5
    assert losses["crd"] > 5 * losses["running"]


def test_official_code_variant_is_two_sided_crd() -> None:
    from cmim_dense.losses.cmim_code import OfficialCMIMLoss

    labels = torch.arange(12) % 3
    loss_fn = OfficialCMIMLoss(8, 6, dataset_size=12, labels=labels, n_nce=4, embed_dim=5)
    assert not any(p.requires_grad for p in loss_fn.parameters())  # official: heads never trained
    student = torch.randn(4, 8, requires_grad=True)
    teacher = torch.randn(4, 6)
    before = loss_fn.bank_teacher.values.clone()
    loss = loss_fn(student, teacher, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss) and student.grad.abs().sum() > 0
    changed = (loss_fn.bank_teacher.values != before).any(dim=1)
    assert changed.tolist() == [True] * 4 + [False] * 8
    assert torch.isfinite(loss_fn.log_z).all()
    trainable = OfficialCMIMLoss(8, 6, dataset_size=12, n_nce=4, train_heads=True)
    assert all(p.requires_grad for p in trainable.parameters())


def test_shared_negatives_leave_out_the_anchor_itself() -> None:
    bank = MemoryBank(3, 4, seed=0)
    negatives, own = bank.sample_shared(torch.tensor([0, 2]), 40)
    assert negatives.shape == (40, 4) and own.shape == (2, 40)
    for row in range(2):
        anchor = bank.values[[0, 2][row]]
        assert torch.equal(own[row], (negatives == anchor).all(dim=1))
    assert own.any() and not own.all()

    # with per-anchor draws excluded, an anchor's own bank row cannot change its loss
    config = CMIMConfig(tau=0.5, n_nce=32, layers="stages")
    latent = torch.randn(1, 2, 2, 2)
    taps = {"s": Tap("s", latent, binary_sign(latent))}
    losses = []
    for own_row in (torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])):
        loss_fn = CMIMLoss({"s": 2}, dataset_size=2, config=config, embed="none", site_dims={"s": 8},
                           normalizer="none", seed=3)
        bank = loss_fn.banks["s"]
        bank.values = torch.zeros(2, 8)
        bank.values[1, 0] = 0.5
        bank.values[0, :2] = own_row
        losses.append(loss_fn(taps, torch.tensor([0])).total)
    assert torch.isfinite(losses[0]) and torch.equal(losses[0], losses[1])


def test_per_anchor_negatives_score_each_anchor_against_its_own_draws() -> None:
    # CRD's sampling (shared_negatives=False): with every bank row the same vector v, each anchor's
    # n negatives all score a.v / tau, whatever was drawn
    config = CMIMConfig(tau=0.5, n_nce=5, layers="stages")
    latent = torch.randn(3, 2, 2, 2)
    taps = {"s": Tap("s", latent, binary_sign(latent))}
    loss_fn = CMIMLoss({"s": 2}, dataset_size=10, config=config, embed="none", site_dims={"s": 8},
                       normalizer="none", shared_negatives=False)
    row = torch.randn(8)
    loss_fn.banks["s"].values = row.expand(10, 8).clone()
    anchor, flat = binary_sign(latent).flatten(1), latent.flatten(1)
    positive = (anchor * flat).sum(dim=1) / config.tau
    scores = (anchor @ row / config.tau)[:, None].expand(3, config.n_nce)
    expected = config.lam * layer_weights(1, config.beta)[0] * nce_loss(positive, scores, config.n_nce / 10)
    assert torch.allclose(loss_fn(taps, torch.tensor([0, 1, 2])).total, expected)
