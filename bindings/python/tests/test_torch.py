"""gbtd.torch.compress_model on torchvision's resnet18, resnext50_32x4d and mobilenet_v2 (random
weights): the compressed models run, reload with strict=True, every layer's output error matches its
kernel error (gbtd's verify and an independent PyTorch check), the reported multiply-adds equal a
count from the modules' own attributes, and ranks and errors equal independent NumPy computations."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import gbtd
import gbtd.torch as gt

torch.manual_seed(0)
X = torch.randn(2, 3, 64, 64)


def compressed(name, **kw):
    torch.manual_seed(1)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    small, report = gt.compress_model(model, example_input=X, n_iter_max=10, **kw)
    return model, small, report


def module(model, name):
    m = model
    for part in name.split("."):
        m = getattr(m, part)
    return m


def torch_output_error(old, chain, shape, seed=0):
    """The output error of `chain` against `old` on Gaussian input, biases left out, computed
    with PyTorch alone."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        if isinstance(old, torch.nn.Conv2d):
            y = F.conv2d(x, old.weight.double(), None, old.stride, old.padding, old.dilation, old.groups)
            h = x
            for k, c in enumerate(chain):
                h = F.conv2d(h, c.weight.double(), None, c.stride, c.padding, c.dilation, c.groups)
        else:
            y = F.linear(x, old.weight.double())
            h = F.linear(F.linear(x, chain[0].weight.double()), chain[1].weight.double())
    return float((y - h).norm() / y.norm())


def check_model(name, model, small, report, tmp_path, layers_checked=8, arch=None):
    assert report.layers, "nothing compressed"
    with torch.no_grad():
        assert small(X).shape == (2, 10)
    # Reload from the saved file into a fresh, uncompressed model: strict loading succeeds and
    # the outputs are the same.
    path = tmp_path / f"{name}.safetensors"
    gt.save_compressed(small, report, path)
    fresh = getattr(torchvision.models, arch or name)(num_classes=10).eval()
    gt.load_compressed(fresh, path, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(X), small(X), rtol=1e-5, atol=1e-5)
    # gbtd's verify (its tolerance is derived in gbtd::compress::verify) on every layer.
    orig = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), orig)
    v = gbtd.verify(orig, path, input_size=16, batch=2)
    assert v["all_agree"], [(l["name"], l["output_error"], l["expected_output_error"]) for l in v["layers"] if not l["agree"]]
    by_name = {l["name"]: l for l in v["layers"]}
    # An independent check in PyTorch for a sample of layers with 1×1 or 3×3 kernels.
    checked = 0
    for row in report.layers:
        old = module(model, row["name"])
        assert by_name[row["name"]]["kernel_error"] == pytest.approx(row["relative_error"], rel=1e-4, abs=1e-6)
        if isinstance(old, torch.nn.Conv2d) and max(old.kernel_size) > 3:
            continue
        shape = (4, old.in_channels, 32, 32) if isinstance(old, torch.nn.Conv2d) else (512, old.in_features)
        e = torch_output_error(old, module(small, row["name"]), shape)
        assert 0.8 <= e / row["relative_error"] <= 1.25, (row["name"], e, row["relative_error"])
        checked += 1
        if checked == layers_checked:
            break
    # Multiply-adds: the report's per-layer figures (from the recorded sizes) agree with a count
    # from the modules' own attributes over the whole model.
    assert report.macs_before == gt.count_macs(model, X)
    assert report.macs_after == gt.count_macs(small, X)
    saved = sum(l["macs_before"] - l["macs_after"] for l in report.layers)
    assert report.macs_before - report.macs_after == saved
    assert report.params_after == sum(p.numel() for p in small.parameters())


def test_resnet18(tmp_path):
    model, small, report = compressed("resnet18", method="tucker2", rank_rule="ratio:2")
    check_model("resnet18", model, small, report, tmp_path)
    names = [l["name"] for l in report.layers]
    assert "layer1.0.conv1" in names and "fc" in names
    # The stride-2 conv's 1×1 reduce conv runs at the input's positions: its multiply-adds
    # are counted there (reduce weights × 16·16, the rest × 8·8 at a 64×64 input).
    row = next(l for l in report.layers if l["name"] == "layer2.0.conv1")
    chain = module(small, "layer2.0.conv1")
    pin, pout = 16 * 16, 8 * 8
    assert row["macs_after"] == chain[0].weight.numel() * pin + (chain[1].weight.numel() + chain[2].weight.numel()) * pout


def test_resnext50_grouped_convs_are_compressed_group_by_group(tmp_path):
    model, small, report = compressed(
        "resnext50_32x4d", method="tucker2", rank_rule="energy:0.8", layers=r"^layer1\.0\.|^layer2\.0\.conv2$"
    )
    check_model("resnext50_32x4d", model, small, report, tmp_path)
    row = next(l for l in report.layers if l["name"] == "layer1.0.conv2")
    assert row["groups"] == 32 and row["shape"] == [128, 4, 3, 3]
    chain = module(small, "layer1.0.conv2")
    # The chain reads the 128 channels the layer receives, in 32 groups.
    assert chain[0].in_channels == 128 and chain[0].groups == 32
    assert chain[1].groups == 32 and chain[2].groups == 32 and chain[2].out_channels == 128


def test_mobilenet_v2_skips_depthwise_and_compresses_the_rest(tmp_path):
    model, small, report = compressed("mobilenet_v2", method="cp", rank_rule="ratio:2")
    check_model("mobilenet_v2", model, small, report, tmp_path)
    skipped = dict(report.skipped)
    depthwise = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1]
    assert depthwise and all("depthwise" in skipped[n] for n in depthwise)
    assert any(l["kind"] == "linear" for l in report.layers)


def test_btd_and_fixed_ranks(tmp_path):
    model, small, report = compressed("resnet18", method="btd", n_terms=2, rank_rule="fixed:16,16", layers=r"^layer3\.")
    check_model("resnet18_btd", model, small, report, tmp_path, layers_checked=3, arch="resnet18")
    chain = module(small, "layer3.0.conv2")
    assert chain[1].groups == 2 and chain[1].in_channels == 32 and chain[1].out_channels == 32


def test_linear_layers_get_the_optimal_truncated_svd():
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10))
    small, report = gt.compress_model(net, method="tucker2", rank_rule="fixed:8,8", example_input=torch.randn(3, 64))
    row = next(l for l in report.layers if l["name"] == "1")
    w = net[1].weight.detach().double().numpy()
    s = np.linalg.svd(w, compute_uv=False)
    # Eckart–Young: the best rank-8 approximation leaves the trailing singular values.
    assert row["ranks"] == [8]
    assert row["relative_error"] == pytest.approx(np.sqrt((s[8:] ** 2).sum() / (s**2).sum()), rel=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(small[1][1].bias, net[1].bias)


def test_energy_ranks_equal_numpy():
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(24, 32, 3, padding=1))
    small, report = gt.compress_model(net, method="tucker2", rank_rule="energy:0.6", example_input=torch.randn(1, 24, 8, 8))
    w = net[0].weight.detach().double().numpy()
    want = []
    for mode in (0, 1):
        unf = np.moveaxis(w, mode, 0).reshape(w.shape[mode], -1)
        s2 = np.linalg.svd(unf, compute_uv=False) ** 2
        want.append(int(np.searchsorted(np.cumsum(s2), 0.6 * s2.sum() * (1 - 1e-12)) + 1))
    assert report.layers[0]["ranks"] == want


def test_benchmark_and_bad_arguments():
    net = torchvision.models.resnet18(num_classes=10).eval()
    small, report = gt.compress_model(net, rank_rule="ratio:2", layers=r"^layer1\.0\.conv1$", example_input=X, benchmark=True, benchmark_runs=2)
    assert report.latency_before > 0 and report.latency_after > 0
    assert "CPU latency" in report.table()
    with pytest.raises(ValueError, match="method"):
        gt.compress_model(net, method="svd")
    with pytest.raises(ValueError, match="n_terms"):
        gt.compress_model(net, method="btd")
    with pytest.raises(ValueError, match="example_input"):
        gt.compress_model(net, benchmark=True)
    with pytest.raises(ValueError, match="rank rule"):
        gt.compress_model(net, rank_rule="energy:2", layers="fc")
    with pytest.raises(ValueError, match="no conv or linear layer"):
        gt.compress_model(net, layers="nothing-matches")


def test_layer_info_feeds_the_cli_format(tmp_path):
    net = torchvision.models.resnext50_32x4d(num_classes=10).eval()
    info = gt.layer_info(net, X, tmp_path / "info.json")
    assert info["layers"]["layer1.0.conv2"]["groups"] == 32
    assert info["layers"]["conv1"]["input_positions"] == 64 * 64
    assert info["layers"]["conv1"]["output_positions"] == 32 * 32
    assert (tmp_path / "info.json").exists()
