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


def test_bank_negatives_are_distinct_other_rows_drawn_uniformly() -> None:
    """``MemoryBank.sample`` itself, on a bank whose rows name their index: 4 negatives for each of
    420 anchors (60 per row, in chunks of 2 anchors) are 4 distinct rows, never the anchor's own, and
    each of the 6 other rows gets about a sixth of an anchor's 240 draws (40 expected, sd about 5.5;
    bounds 20..60 are 3.6 sd); asking for more negatives than the other rows is refused.

    Catches: draws with replacement (the old sampler gave 6.6 % duplicates), the anchor as its own
    negative, negatives drawn for the wrong anchor (chunks misaligned), a biased draw."""
    bank = indexed_bank(7)
    anchors = torch.arange(7).repeat(60)
    drawn = bank.sample(anchors, 4, chunk_elements=14)
    assert drawn.shape == (420, 4, 2) and drawn.dtype == torch.float32
    rows = drawn[..., 0].long()
    assert not (rows == anchors[:, None]).any()
    assert (rows.sort(dim=1).values.diff(dim=1) > 0).all()  # distinct within each anchor
    for anchor in range(7):
        counts = torch.bincount(rows[anchors == anchor].flatten(), minlength=7)
        others = counts[torch.arange(7) != anchor]
        assert counts[anchor] == 0 and ((others > 20) & (others < 60)).all(), (anchor, counts.tolist())
    assert bank.sample(torch.tensor([3]), 6)[0, :, 0].sort().values.tolist() == [0, 1, 2, 4, 5, 6]
    with pytest.raises(ValueError, match="7 negatives per anchor exceed the 6 allowed rows"):
        bank.sample(torch.tensor([0]), 7)


def test_class_aware_negatives_come_from_other_classes_without_replacement() -> None:
    """With labels set, each anchor's negatives are distinct rows of other classes; asking for all
    the rows the largest class leaves gives exactly the other classes' rows; without labels the
    same bank does draw same-class rows (the test can see them).

    Catches: labels ignored, the comparison made against the negative's own index instead of its
    class, a pool size that ignores the largest class."""
    bank = indexed_bank(7)
    classes = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    anchors = torch.tensor([0, 2, 4] * 20)
    plain = bank.sample(anchors, 4)[..., 0].long()
    assert (classes[plain] == classes[anchors][:, None]).any()
    bank.set_labels(classes)
    assert bank.max_negatives == 4  # 7 rows less the 3 of class 2
    drawn = bank.sample(anchors, 4)[..., 0].long()
    assert not (classes[drawn] == classes[anchors][:, None]).any()
    assert (drawn.sort(dim=1).values.diff(dim=1) > 0).all()
    assert drawn[anchors == 4].sort(dim=1).values.unique(dim=0).tolist() == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="5 negatives per anchor exceed the 4 allowed rows"):
        bank.sample(anchors, 5)
    with pytest.raises(ValueError, match="need 7 labels"):
        bank.set_labels(torch.zeros(5, dtype=torch.long))


def test_shared_negatives_are_distinct_rows_and_mask_the_anchor_and_its_class() -> None:
    """One batch's shared draw is n distinct rows; the mask leaves out exactly the anchor itself
    (label-free) or every row of the anchor's class (labels set)."""
    bank = indexed_bank(9)
    anchors = torch.tensor([0, 4, 8])
    negatives, excluded = bank.sample_shared(anchors, 9)
    rows = negatives[:, 0].long()
    assert sorted(rows.tolist()) == list(range(9)) and excluded.shape == (3, 9)
    assert torch.equal(excluded, rows[None, :] == anchors[:, None])
    classes = torch.arange(9) // 3
    bank.set_labels(classes)
    negatives, excluded = bank.sample_shared(anchors, 5)
    rows = negatives[:, 0].long()
    assert rows.unique().numel() == 5
    assert torch.equal(excluded, classes[rows][None, :] == classes[anchors][:, None])
    with pytest.raises(ValueError, match="10 shared negatives exceed the bank's 9 rows"):
        bank.sample_shared(anchors, 10)


def test_more_negatives_than_the_allowed_pool_are_refused_in_one_line() -> None:
    """N must stay below the pool every sample has: 10 samples of 5 classes leave 8 of other classes
    (9 others label-free); asking for more is refused naming the flag and a usable value."""
    labels = torch.arange(10) % 5
    CMIMLoss({"s": 2}, 10, CMIMConfig(n_nce=8), labels=labels)
    CMIMLoss({"s": 2}, 10, CMIMConfig(n_nce=9))
    with pytest.raises(ValueError, match=r"^--cmim-nce-n 9 asks for more negatives than the 8 samples of other "
                                         r"classes that each of the 10 training samples has: use --cmim-nce-n 4"):
        CMIMLoss({"s": 2}, 10, CMIMConfig(n_nce=9), labels=labels)
    with pytest.raises(ValueError, match="than the 9 other samples"):
        CMIMLoss({"s": 2}, 10, CMIMConfig(n_nce=10))


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
    assert {bank.values.dtype for banks in loss_fn.banks.values() for bank in banks.values()} == {torch.float16}


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
    for bank in loss_fn.banks["layer4.1.conv2"].values():
        assert torch.allclose(bank.values.norm(dim=1), torch.ones(20), atol=1e-5)


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
    """Once every bank row is the same latent, a Z frozen on the random first bank puts all
    negatives at h ~ 1 and the summed negative term explodes; a running Z follows the scores.
    (Raw latents, ``embed="none"``: the mlp embedding standardises over the batch, which
    undoes this collapse.)"""
    torch.manual_seed(0)
    config = CMIMConfig(tau=0.1, n_nce=64, layers="stages")
    latent = torch.randn(1, 8, 2, 2).expand(16, -1, -1, -1) + 0.01 * torch.randn(16, 8, 2, 2)
    tap = {"s": Tap("s", latent, binary_sign(latent))}
    losses = {}
    for normalizer in ("crd", "running"):
        torch.manual_seed(1)
        loss_fn = CMIMLoss({"s": 8}, dataset_size=256, config=config, normalizer=normalizer, momentum=0.0,
                           embed="none", site_dims={"s": 32})
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
    loss = loss_fn.contrast(student, teacher, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss) and student.grad.abs().sum() > 0
    changed = (loss_fn.bank_teacher.values != before).any(dim=1)
    assert changed.tolist() == [True] * 4 + [False] * 8
    assert torch.isfinite(loss_fn.log_z).all()
    trainable = OfficialCMIMLoss(8, 6, dataset_size=12, n_nce=4, train_heads=True)
    assert all(p.requires_grad for p in trainable.parameters())


def test_left_out_pairs_change_nothing_and_the_negative_term_is_n_times_the_kept_mean() -> None:
    """Eq. 13's N E_neg[log(1 - h)] over the kept pairs, in both directions averaged: with the
    anchor's own bank rows drawn and left out, their values cannot change the loss, and the loss
    equals the hand formula with each direction's kept negatives' mean log(1 - h) times N."""
    config = CMIMConfig(tau=0.5, n_nce=2, layers="stages")
    latent = torch.randn(1, 2, 2, 2)
    taps = {"s": Tap("s", latent, binary_sign(latent))}
    rows = {"latent": ([0.5, 0.0], [0.0, -0.25]), "binary": ([-0.75, 0.5], [0.25, 1.0])}
    losses, draws = [], {}
    for own_row in (torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])):
        loss_fn = CMIMLoss({"s": 2}, dataset_size=3, config=config, embed="none", site_dims={"s": 8},
                           normalizer="none", seed=3)
        for side, bank in loss_fn.banks["s"].items():
            bank.values = torch.zeros(3, 8)
            bank.values[1, :2], bank.values[2, :2] = torch.tensor(rows[side][0]), torch.tensor(rows[side][1])
            bank.values[0, :2] = own_row
            state = bank.generator.get_state()
            draws[side] = torch.randperm(3, generator=bank.generator)[:2].tolist()
            assert 0 in draws[side]  # the anchor's own row is among the draws, to be left out
            bank.generator.set_state(state)
        banked = {side: bank.values.clone() for side, bank in loss_fn.banks["s"].items()}
        losses.append(loss_fn(taps, torch.tensor([0])).total)
    assert torch.isfinite(losses[0]) and torch.equal(losses[0], losses[1])
    # by hand: a_B and a_F / r (r its RMS); positive <a_B, a_F/r>/tau; a_B against banked latents, a_F/r
    # against banked binaries
    flat = latent.flatten(1)[0]
    binary, scaled = binary_sign(flat), flat / flat.pow(2).mean().sqrt()
    noise = 2 / 3
    h = lambda s: math.exp(s) / (math.exp(s) + noise)  # noqa: E731
    positive = math.log(h(float(binary @ scaled) / 0.5))

    def direction(anchor: torch.Tensor, side: str) -> float:
        kept = [j for j in draws[side] if j != 0]
        mean_log = sum(math.log(1 - h(float(anchor @ banked[side][j]) / 0.5)) for j in kept) / len(kept)
        return -(positive + 2 * mean_log)

    expected = (direction(binary, "latent") + direction(scaled, "binary")) / 2
    assert losses[1].item() == pytest.approx(config.lam * config.beta * expected, rel=1e-5)


def test_per_anchor_negatives_score_each_anchor_against_its_own_draws() -> None:
    # CRD's sampling (shared_negatives=False): with every bank row the same vector v, each anchor's
    # n negatives all score a.v / tau, whatever was drawn
    config = CMIMConfig(tau=0.5, n_nce=5, layers="stages")
    latent = torch.randn(3, 2, 2, 2)
    taps = {"s": Tap("s", latent, binary_sign(latent))}
    loss_fn = CMIMLoss({"s": 2}, dataset_size=10, config=config, embed="none", site_dims={"s": 8},
                       normalizer="none", shared_negatives=False)
    row = torch.randn(8)
    for bank in loss_fn.banks["s"].values():
        bank.values = row.expand(10, 8).clone()
    binary, flat = binary_sign(latent).flatten(1), latent.flatten(1)
    scaled = flat / flat.pow(2).mean().sqrt()
    positive = (binary * scaled).sum(dim=1) / config.tau
    directions = [nce_loss(positive, (anchor @ row / config.tau)[:, None].expand(3, config.n_nce), config.n_nce / 10)
                  for anchor in (binary, scaled)]
    expected = config.lam * layer_weights(1, config.beta)[0] * (directions[0] + directions[1]) / 2
    assert torch.allclose(loss_fn(taps, torch.tensor([0, 1, 2])).total, expected)


def test_default_path_matches_a_hand_computation_over_two_steps() -> None:
    """Issue #21, item 4: the default CMIM path (two embedding heads per site, shared class-aware
    negatives drawn without replacement, the running normaliser) against a float64 computation
    written from the equations, two sites, two steps: lambda multiplies Eq. 14's weighted sum
    (weights 1 and beta for K = 2) of each site's L_NCE, the two directions' Eq. 13 averaged.

    Catches: lambda applied per layer or not at all, the layer weights reversed, the directions
    summed instead of averaged, the positive left out of Z, Z's running mean weighted the wrong
    way, the excluded pairs counted in the negative mean, the bank read after its update."""
    torch.manual_seed(0)
    config = CMIMConfig(lam=0.7, beta=3.0, tau=0.2, n_nce=5)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    channels = {"a": 3, "b": 4}
    loss_fn = CMIMLoss(channels, 10, config, embed_dim=6, labels=labels, seed=5)
    indices = [torch.tensor([1, 4, 8]), torch.tensor([0, 2, 9])]
    log_z: dict[tuple[str, str], float] = {}
    for step, batch in enumerate(indices):
        taps = {site: Tap(site, latent := torch.randn(3, c, 2, 2), binary_sign(latent)) for site, c in channels.items()}
        banks = {site: {side: bank.values.double().clone() for side, bank in sides.items()}
                 for site, sides in loss_fn.banks.items()}
        generators = {site: {side: bank.generator.get_state() for side, bank in sides.items()}
                      for site, sides in loss_fn.banks.items()}
        total = loss_fn(taps, batch).total
        expected = 0.0
        for k, (site, tap) in enumerate(taps.items()):
            embedded = {}
            for side, activation in (("binary", tap.binary), ("latent", tap.latent)):
                head = loss_fn.heads[site]
                pooled = activation.double().mean(dim=(2, 3))
                centred = pooled - pooled.mean(dim=0)
                relative = centred / centred.pow(2).mean().sqrt()
                standard = relative / (relative.pow(2).mean(dim=0) + 1e-5).sqrt()
                first, second = head[side].mlp[0], head[side].mlp[2]
                hidden = (standard @ first.weight.double().T + first.bias.double()).clamp(min=0)
                out = hidden @ second.weight.double().T + second.bias.double()
                embedded[side] = out / out.norm(dim=1, keepdim=True)
            site_loss = 0.0
            for anchor_side, bank_side in (("binary", "latent"), ("latent", "binary")):
                generator = torch.Generator().manual_seed(0)
                generator.set_state(generators[site][bank_side])
                drawn = torch.randperm(10, generator=generator)[:5]
                anchor, partner = embedded[anchor_side], embedded[bank_side]
                positive = (anchor * partner).sum(dim=1) / 0.2
                scores = anchor @ banks[site][bank_side][drawn].T / 0.2
                kept = labels[drawn][None, :] != labels[batch][:, None]
                values = torch.cat([positive, scores[kept]])
                batch_log_z = math.log(values.exp().mean().item() * 10)
                key = (site, anchor_side)
                log_z[key] = batch_log_z if step == 0 else math.log(0.9 * math.exp(log_z[key]) + 0.1 * math.exp(batch_log_z))
                noise = 5 / 10
                h = lambda s: (s - log_z[key]).exp() / ((s - log_z[key]).exp() + noise)  # noqa: E731
                negative = [math.fsum(torch.log(1 - h(scores[i][kept[i]])).tolist()) / int(kept[i].sum()) for i in range(3)]
                site_loss += -sum(math.log(h(positive[i]).item()) + 5 * negative[i] for i in range(3)) / 3 / 2
            expected += [1.0, 3.0][k] * site_loss
        assert total.item() == pytest.approx(0.7 * expected, rel=1e-5), step
