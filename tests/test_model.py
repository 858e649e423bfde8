from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.special import gammaln
from torch import nn

from st_hist2st.nn import Architecture, Hist2STModule, correlation_loss, random_stain_jitter
from st_hist2st.nn._augment import SectionAugment, random_dihedral
from st_hist2st.nn._convmixer import PatchEncoder, SectionBatchNorm2d
from st_hist2st.nn._gnn import GraphJumpingKnowledge, GraphSAGE, lstm_mean, mean_adjacency
from st_hist2st.nn._losses import distillation_teacher, zinb_nll
from st_hist2st.nn._module import section_channel_statistics
from st_hist2st.nn._plan import Hist2STPlan, pearson_per_gene
from st_hist2st.nn._training import Training, preset


def test_parameter_count_matches_the_authors_model():
    module = Hist2STModule(Architecture(n_genes=785))
    assert sum(p.numel() for p in module.parameters()) == 75_789_833
    assert "75,789,833" in repr(module)


def test_output_shapes(tiny):
    arch = Architecture(n_genes=7, **tiny)
    module = Hist2STModule(arch).eval()
    patches = torch.randint(0, 255, (2, 5, 3, 112, 112), dtype=torch.uint8)
    positions = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1], [5, 5]])
    edge_index = torch.tensor([[1, 2, 0, 3], [0, 0, 1, 1]])
    out = module(patches, positions, edge_index)
    assert out.expression.shape == (2, 5, 7)
    assert out.h.shape == (2, 5, arch.dim)
    assert PatchEncoder(channels=8, patch_size=14)(torch.rand(3, 3, 112, 112)).shape == (3, 64)


#   0 <- 1, 0 <- 2, 1 <- 0, 1 <- 3, 4 isolated
EDGES = torch.tensor([[1, 2, 0, 3], [0, 0, 1, 1]])


@pytest.mark.parametrize("sparse_adjacency", [False, True])
def test_graphsage_equals_a_dense_hand_computation(sparse_adjacency):
    torch.manual_seed(0)
    layer = GraphSAGE(6, 4)
    x = torch.randn(5, 6)
    adj = torch.zeros(5, 5)
    adj[EDGES[1], EDGES[0]] = 1.0
    deg = adj.sum(1, keepdim=True)
    mean = torch.where(deg > 0, adj / deg.clamp(min=1), 0.0) @ x
    expected = torch.nn.functional.normalize(torch.relu(mean @ layer.weight.T), dim=1)
    graph = mean_adjacency(EDGES, 5) if sparse_adjacency else EDGES
    out = layer(x, graph)
    torch.testing.assert_close(out, expected)
    assert out[4].abs().sum() == 0  # no neighbours, zero message
    batched = layer(torch.stack([x, 2 * x]), graph)
    torch.testing.assert_close(batched[0], expected)


def test_graphsage_max_policy():
    torch.manual_seed(0)
    layer = GraphSAGE(3, 3, policy="max")
    x = torch.randn(5, 3)
    agg = torch.stack([torch.maximum(x[1], x[2]), torch.maximum(x[0], x[3]), *torch.zeros(3, 3)])
    expected = torch.nn.functional.normalize(torch.relu(agg @ layer.weight.T), dim=1)
    torch.testing.assert_close(layer(x, EDGES), expected)
    with pytest.raises(ValueError, match="policy"):
        GraphSAGE(3, 3, policy="sum")


def test_jumping_knowledge_lstm_equals_torch_lstm():
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 8, 2)
    x = torch.randn(4, 6, 8)
    torch.testing.assert_close(lstm_mean(lstm, x), lstm(x)[0].mean(0))
    jk = GraphJumpingKnowledge(8, depth=2)
    assert jk(torch.randn(2, 5, 8), EDGES).shape == (2, 5, 8)


def test_zinb_loss_equals_a_hand_computation():
    counts = torch.tensor([[0.0, 3.0], [5.0, 0.0]])
    mean = torch.tensor([[1.5, 2.0], [4.0, 0.5]])
    disp = torch.tensor([[2.0, 0.7], [1.2, 3.0]])
    pi = torch.tensor([[0.1, 0.3], [0.2, 0.6]])
    sf = torch.tensor([1.0, 2.0])
    m = (mean * sf[:, None]).numpy().astype(float)
    c, r, p = counts.numpy().astype(float), disp.numpy().astype(float), pi.numpy().astype(float)
    # negative binomial with mean m and dispersion r, zero-inflated by p
    log_nb = gammaln(c + r) - gammaln(r) - gammaln(c + 1) + r * np.log(r / (r + m)) + c * np.log(m / (r + m))
    nll = np.where(c == 0, -np.log(p + (1 - p) * (r / (r + m)) ** r), -(np.log(1 - p) + log_nb))
    assert zinb_nll(counts, mean, disp, pi, sf).item() == pytest.approx(nll.mean(), rel=1e-5)


def test_correlation_loss_equals_one_minus_the_mean_pearson_r():
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    target[:, 1] += 2 * pred[:, 1]
    target[:, 2] = 1.5  # constant over the spots: counts as r = 0 and gets no gradient
    r = [np.corrcoef(pred[:, g], target[:, g])[0, 1] for g in (0, 1)]
    pred_t = torch.tensor(pred, requires_grad=True)
    loss = correlation_loss(pred_t, torch.tensor(target))
    assert loss.item() == pytest.approx(1 - (r[0] + r[1] + 0) / 3, rel=1e-6)
    loss.backward()
    assert torch.all(pred_t.grad[:, 2] == 0) and torch.all(pred_t.grad[:, :2].abs().sum(0) > 0)
    # indifferent to each gene's level and scale in the prediction
    shifted = correlation_loss(torch.tensor(pred * [2.0, 0.5, 1.0] + 3), torch.tensor(target))
    assert shifted.item() == pytest.approx(loss.item(), rel=1e-6)


def test_distillation_teacher_is_a_softmax_weighted_mean():
    preds = torch.tensor([[[1.0]], [[3.0]]])
    weights = torch.tensor([[[0.0]], [[np.log(3.0)]]])
    assert distillation_teacher(preds, weights).item() == pytest.approx(0.25 * 1 + 0.75 * 3)


def test_augment_keeps_dtype_and_shape():
    x = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    out = SectionAugment()(x, passes=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 4, 3, 16, 16) and out.dtype == torch.uint8
    same = SectionAugment.transform(x, grey=False, angle=0.0, flip=False)
    torch.testing.assert_close(same, x)
    flipped = SectionAugment.transform(x, grey=False, angle=0.0, flip=True)
    torch.testing.assert_close(flipped, x.flip(-1))
    grey = SectionAugment.transform(x, grey=True, angle=0.0, flip=False)
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()


def _batch(n=6, genes=5):
    g = torch.Generator().manual_seed(0)
    counts = torch.poisson(torch.rand(n, genes, generator=g) * 5)
    return {
        "patches": torch.randint(0, 255, (n, 3, 112, 112), dtype=torch.uint8, generator=g),
        "positions": torch.randint(0, 8, (n, 2), generator=g),
        "edge_index": torch.tensor([[1, 2, 0, 3], [0, 0, 1, 1]]),
        "targets": torch.log10(1 + counts),
        "counts": counts,
        "size_factors": torch.ones(n),
    }


@pytest.mark.parametrize("batch_passes", [True, False])
def test_losses_are_finite_and_gradients_reach_every_part(batch_passes, tiny):
    arch, training = preset("paper", **tiny, n_genes=5, bake=2, batch_passes=batch_passes)
    plan = Hist2STPlan({**arch, "n_genes": 5}, training.to_dict())
    out = plan.losses(_batch())
    assert set(out) == {"mse", "zinb", "distill", "loss"}
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    net = plan.net
    for part in (net.encoder, net.transformer, net.gnn, net.gene_head, net.zinb, net.pass_weight):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), part


@pytest.mark.parametrize("batch_passes", [True, False])
def test_only_batched_passes_change_the_clean_prediction(batch_passes, tiny):
    # batched, BatchNorm normalises the clean patches with the augmented copies; one after the other it does not
    arch, training = preset("paper", **tiny, n_genes=5, bake=2, batch_passes=batch_passes)
    plan = Hist2STPlan({**arch, "n_genes": 5}, training.to_dict())
    batch = _batch()
    with_passes = plan.losses(batch)["mse"]
    plan.settings = dataclasses.replace(plan.settings, bake=0)
    without = plan.losses(batch)["mse"]
    assert torch.equal(with_passes, without) != batch_passes


def test_the_distillation_passes_run_one_after_the_other_by_default():
    assert Training().batch_passes is False
    assert preset("paper")[1].batch_passes is False


def test_the_correlation_loss_is_added_with_its_weight(tiny):
    arch, training = preset("fast", **tiny, pearson=0.3)
    plan = Hist2STPlan({**arch, "n_genes": 5}, training.to_dict())
    plan.eval()  # BatchNorm on the section's statistics either way: the same prediction as below
    batch = _batch()
    out = plan.losses(batch)
    pred = plan.net(batch["patches"], batch["positions"], batch["edge_index"]).expression[0]
    torch.testing.assert_close(out["pearson"], correlation_loss(pred, batch["targets"]))
    torch.testing.assert_close(out["loss"], out["mse"] + 0.3 * out["pearson"])
    assert "pearson" not in Hist2STPlan({**arch, "n_genes": 5}, preset("fast", **tiny)[1].to_dict()).losses(batch)


def test_pearson_per_gene_marks_constant_genes_nan():
    pred = torch.tensor([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
    obs = torch.tensor([[2.0, 1.0], [4.0, 5.0], [6.0, 0.0]])
    r = pearson_per_gene(pred, obs)
    assert r[0].item() == pytest.approx(1.0)
    assert torch.isnan(r[1])


def test_training_settings_are_checked():
    with pytest.raises(ValueError, match="schedule"):
        Training(schedule="linear")
    with pytest.raises(ValueError, match="preset"):
        preset("best")
    with pytest.raises(ValueError, match="`pearson` is a loss weight"):
        Training(pearson=-1)
    fast = preset("fast")[1]
    assert fast.lr_factor(0) < fast.lr_factor(fast.warmup_epochs) == pytest.approx(1.0)
    assert Training().lr_factor(50) == pytest.approx(0.9)


def test_crop_section_keeps_a_window_and_its_subgraph():
    from st_hist2st.nn._plan import crop_section

    # a 4 x 4 grid with edges between horizontal neighbours
    pos = torch.tensor([[c, r] for r in range(4) for c in range(4)])
    src = torch.tensor([i for i in range(16) if i % 4 != 3])
    batch = {"positions": pos, "edge_index": torch.stack([src, src + 1]), "targets": torch.arange(16.0)[:, None]}
    out = crop_section(batch, 0.25, generator=torch.Generator().manual_seed(1))
    assert out["positions"].shape == (4, 2)
    assert out["edge_index"].max() < 4
    kept = out["targets"].ravel().long()
    # every kept edge joins two kept spots that were neighbours before
    for s, t in out["edge_index"].t().tolist():
        assert kept[t] - kept[s] == 1
    span = out["positions"].float()
    assert (span.max(0).values - span.min(0).values).max() <= 2


def test_training_steps_on_windows_when_asked(tiny):
    seen = []
    for fraction, expected in ((None, 8), (0.5, 4)):
        arch, training = preset("fast", **tiny, crop_fraction=fraction)
        plan = Hist2STPlan({**arch, "n_genes": 5}, training.to_dict())
        plan.losses = lambda batch: seen.append(batch["patches"].shape[0]) or {"loss": torch.zeros(())}
        plan.log = lambda *args, **kwargs: None
        plan.training_step(plan.training_window(_batch(n=8)), 0)
        assert seen[-1] == expected
    arch, training = preset("fast", **tiny, max_spots=3)
    plan = Hist2STPlan({**arch, "n_genes": 5}, training.to_dict())
    assert plan.training_window(_batch(n=8))["patches"].shape[0] == 3


def test_gene_statistics_set_the_output_bias_and_the_loss_weights(tiny):
    mean, var = torch.tensor([0.5, 1.0, 2.0, 0.0, 1.5]), torch.tensor([1.0, 0.25, 4.0, 0.0, 1.0])
    arch, training = preset("paper", **tiny, zinb=False, bake=0, init_output_bias=True, standardize_genes=True)
    plan = Hist2STPlan({**arch, "n_genes": 5}, training.to_dict())
    plan.set_gene_statistics(mean, var)
    torch.testing.assert_close(plan.net.gene_head.linear.bias.detach(), mean)
    # inverse variance, the last gene's zero variance floored at 1 % of the mean variance, averaging 1
    expected = 1 / torch.tensor([1.0, 0.25, 4.0, 0.0125, 1.0])
    torch.testing.assert_close(plan.gene_weights, expected / expected.mean())
    batch = _batch()
    plan.eval()  # BatchNorm on running statistics: the same prediction inside losses()
    pred = plan.net(batch["patches"], batch["positions"], batch["edge_index"]).expression[0]
    weighted = ((pred - batch["targets"]) ** 2 * plan.gene_weights).mean()
    torch.testing.assert_close(plan.losses(batch)["mse"], weighted)

    untouched = Hist2STPlan({**arch, "n_genes": 5}, preset("paper", **tiny)[1].to_dict())
    bias = untouched.net.gene_head.linear.bias.detach().clone()
    untouched.set_gene_statistics(mean, var)
    torch.testing.assert_close(untouched.net.gene_head.linear.bias.detach(), bias)
    assert untouched.gene_weights is None


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    jk = GraphJumpingKnowledge(8, depth=2)
    jk.lstm_chunk = 3
    x = torch.randn(2, 5, 8, requires_grad=True)
    jk(x, EDGES).sum().backward()
    plain = x.grad.clone()
    x.grad = None
    jk.gradient_checkpointing = True
    jk(x, EDGES).sum().backward()
    torch.testing.assert_close(x.grad, plain)


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of ``fn()``, and run it."""
    storages = {}

    def pack(t):
        if t.layout == torch.strided:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.backward()
    return sum(storages.values())


def test_checkpointing_the_whole_network_keeps_less_and_gives_the_same_gradients(tiny):
    # eval mode: in training mode the encoder's BatchNorm would normalise each chunk by its own statistics
    net = Hist2STModule(n_genes=5, **tiny).eval()
    net.checkpoint_chunk = 2
    batch = _batch(n=6)
    grads, saved = {}, {}
    for flag in (False, True):
        net.zero_grad()
        net.gradient_checkpointing = flag
        saved[flag] = _saved_bytes(
            lambda: net(batch["patches"], batch["positions"], batch["edge_index"]).expression.square().sum()
        )
        grads[flag] = [p.grad.clone() for p in net.parameters() if p.grad is not None]
    assert net.transformer.gradient_checkpointing and net.gnn.gradient_checkpointing
    assert saved[True] < saved[False] / 2
    assert len(grads[True]) == len(grads[False]) > 0
    for plain, recomputed in zip(grads[False], grads[True], strict=True):
        torch.testing.assert_close(recomputed, plain)


def test_random_dihedral_draws_the_eight_symmetries_of_each_patch():
    x = torch.randint(0, 255, (64, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = random_dihedral(x, torch.Generator().manual_seed(1))
    assert y.dtype == torch.uint8 and y.shape == x.shape
    found = set()
    for before, after in zip(x, y, strict=True):
        symmetries = [torch.rot90(before, k, (-2, -1)) for k in range(4)]
        symmetries += [s.flip(-1) for s in symmetries]
        matches = [i for i, s in enumerate(symmetries) if torch.equal(s, after)]
        assert matches
        found.add(matches[0])
    assert found == set(range(8))
    with pytest.raises(ValueError, match="square"):
        random_dihedral(torch.zeros(1, 3, 4, 5))


def test_section_channel_statistics_equal_a_direct_computation():
    patches = torch.randint(0, 256, (2, 7, 3, 16, 16), dtype=torch.uint8)
    mean, std = section_channel_statistics(patches, chunk=3)
    x = patches.double()
    torch.testing.assert_close(mean.view(2, 3), x.mean((1, 3, 4)).float())
    torch.testing.assert_close(std.view(2, 3), x.std((1, 3, 4), unbiased=False).float())


@pytest.mark.parametrize("section_norm", [True, False])
def test_section_norm_ignores_a_colour_shift_of_the_whole_section(section_norm, tiny):
    torch.manual_seed(0)
    module = Hist2STModule(Architecture(n_genes=4, section_norm=section_norm, **tiny)).eval()
    patches = torch.rand(1, 5, 3, 112, 112) * 200
    restained = patches * torch.tensor([0.8, 1.1, 0.6]).view(3, 1, 1) + torch.tensor([30.0, -5.0, 60.0]).view(3, 1, 1)
    positions, edges = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1], [5, 5]]), EDGES
    a = module(patches, positions, edges).expression
    b = module(restained, positions, edges).expression
    assert torch.allclose(a, b, atol=1e-4) == section_norm


@pytest.mark.parametrize("position_embedding", [True, False])
def test_without_position_embedding_grid_positions_do_not_matter(position_embedding, tiny):
    torch.manual_seed(0)
    module = Hist2STModule(Architecture(n_genes=4, position_embedding=position_embedding, **tiny)).eval()
    patches = torch.randint(0, 256, (5, 3, 112, 112), dtype=torch.uint8)
    positions = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1], [5, 5]])
    a = module(patches, positions, EDGES).expression
    b = module(patches, positions + 7, EDGES).expression
    assert torch.allclose(a, b) != position_embedding
    assert (module.x_embed is None) != position_embedding


def test_section_norm_uses_the_whole_section_when_patches_are_encoded_in_chunks(tiny):
    torch.manual_seed(0)
    module = Hist2STModule(Architecture(n_genes=4, section_norm=True, **tiny)).eval()
    patches = torch.randint(0, 256, (2, 9, 3, 112, 112), dtype=torch.uint8)
    positions, edges = torch.stack([torch.arange(9), torch.zeros(9, dtype=torch.long)], 1), EDGES
    whole = module.encode(patches, positions, edges)
    module.encoder_chunk = 4
    torch.testing.assert_close(module.encode(patches, positions, edges), whole)


def test_section_batchnorm_normalises_by_the_batch_in_eval_mode_and_keeps_the_running_averages():
    torch.manual_seed(0)
    bn = SectionBatchNorm2d(4)
    bn.running_mean.fill_(3.0)
    bn.running_var.fill_(2.0)
    x = torch.randn(6, 4, 5, 5) * 2 + 1
    plain = nn.BatchNorm2d(4)
    plain.load_state_dict(bn.state_dict())  # the same weights under the same names
    bn.eval(), plain.eval()
    torch.testing.assert_close(bn(x), plain(x))  # running averages unless asked
    bn.section_statistics = True
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(bn(x), (x - mean) / torch.sqrt(var + bn.eps))
    assert torch.all(bn.running_mean == 3.0) and torch.all(bn.running_var == 2.0)


def test_section_batchnorm_encodes_a_section_at_prediction_as_in_training(tiny):
    patches = torch.randint(0, 256, (6, 3, 112, 112), dtype=torch.uint8).float()
    tokens = {}
    for flag in (False, True):
        torch.manual_seed(1)
        net = Hist2STModule(n_genes=3, section_batchnorm=flag, **{**tiny, "dropout": 0.0})
        assert all(m.section_statistics is flag for m in net.modules() if isinstance(m, SectionBatchNorm2d))
        with torch.no_grad():
            trained = net.encoder.train()(patches)  # normalised by these patches; running averages updated
            running = [m.running_mean.clone() for m in net.modules() if isinstance(m, SectionBatchNorm2d)]
            tokens[flag] = (trained, net.encoder.eval()(patches))
            after = [m.running_mean for m in net.modules() if isinstance(m, SectionBatchNorm2d)]
        assert all(torch.equal(a, b) for a, b in zip(running, after, strict=True))
    assert not torch.allclose(*tokens[False], atol=1e-3)  # running averages of one step are not the batch's
    torch.testing.assert_close(*tokens[True])


def test_per_sequence_attention_checkpointing_recomputes_the_same_dropout_masks():
    from st_hist2st.nn._transformer import Transformer

    torch.manual_seed(0)
    transformer = Transformer(8, depth=2, heads=2, dim_head=4, dropout=0.0, attn_dropout=0.5).double().train()
    transformer.gradient_checkpointing = True
    assert all(block.attn.gradient_checkpointing for block in transformer.blocks)

    def run(x):
        with torch.random.fork_rng():
            torch.manual_seed(1)  # the same masks on every call, so that gradcheck sees one function
            return transformer(x)

    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    # the analytic gradient goes through the recomputation of each sequence's attention in the backward pass
    assert torch.autograd.gradcheck(run, (x,))


def test_stain_jitter_changes_each_patch_differently_and_is_the_identity_at_zero_strength():
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(random_stain_jitter(x, 1e-9), x)
    y = random_stain_jitter(x, 0.2, torch.Generator().manual_seed(0))
    assert y.dtype == torch.uint8 and y.shape == x.shape
    torch.testing.assert_close(y, random_stain_jitter(x, 0.2, torch.Generator().manual_seed(0)))
    change = (y.float() - x.float()).abs().mean((1, 2, 3))
    assert torch.all(change > 1) and len(set(change.tolist())) == 5
    with pytest.raises(ValueError, match="RGB"):
        random_stain_jitter(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 0.1)
    with pytest.raises(ValueError, match="stain_jitter"):
        Training(stain_jitter=1.5)


@pytest.mark.parametrize("section_norm", [False, True])
def test_augmented_passes_made_inside_the_encoder_match_the_stacked_passes(section_norm, tiny):
    torch.manual_seed(0)
    net = Hist2STModule(n_genes=3, section_norm=section_norm, **{**tiny, "dropout": 0.0})
    net.gradient_checkpointing, net.checkpoint_chunk = True, 2  # chunk edges fall on pass edges in both forms
    patches = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8)
    positions, edges = torch.zeros(4, 2, dtype=torch.long), torch.tensor([[0, 1, 2], [1, 2, 3]])
    views = [None, *net.augment.draw(2, torch.Generator().manual_seed(3))]
    stacked = torch.stack([patches] + [SectionAugment.transform(patches, *view) for view in views[1:]])
    results = []
    for args, kwargs in (((stacked,), {}), ((patches,), {"views": views})):
        net.zero_grad()
        h = net.encode(*args, positions, edges, **kwargs)
        h.square().sum().backward()
        results.append((h.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None]))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert len(results[0][1]) == len(results[1][1]) > 0
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("section_batchnorm", [True, False])
def test_chunk_size_does_not_change_predictions(tiny, section_batchnorm):
    module = Hist2STModule(Architecture(n_genes=5, section_batchnorm=section_batchnorm, **tiny)).eval()
    n = 150
    generator = torch.Generator().manual_seed(0)
    patches = torch.randint(0, 255, (n, 3, 112, 112), dtype=torch.uint8, generator=generator)
    positions = torch.stack([torch.arange(n) % 15, torch.arange(n) // 15], dim=1)
    edge_index = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    outputs = []
    for chunk in (64, 4096):
        module.encoder_chunk = chunk
        with torch.inference_mode():
            outputs.append(module(patches, positions, edge_index).expression)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)


def test_chunk_size_does_not_change_the_training_loss(tiny):
    arch, training = preset("fast", **tiny)
    plan = Hist2STPlan({**arch, "n_genes": 5}, training.to_dict())
    batch = _batch()
    losses = []
    for chunk in (4, 4096):
        plan.net.encoder_chunk = chunk
        torch.manual_seed(0)
        losses.append(plan.losses(batch)["loss"])
    torch.testing.assert_close(losses[0], losses[1])
