"""gbtd.load against torch.load / numpy / safetensors' own reader, and the refusal of pickled code."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import gbtd


def state_dict():
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(8, 4, 3, 3, generator=g),
        "conv.bias": torch.randn(8, generator=g, dtype=torch.float64),
        "half": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "bn.num_batches_tracked": torch.tensor(17),
        "mask": torch.tensor([True, False, True]),
        "ints": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        # A view into a larger storage, and a transposed (non-contiguous) tensor.
        "view": torch.arange(20.0)[5:11].reshape(2, 3),
        "transposed": torch.randn(3, 4, generator=g).t(),
    }


def expected(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.contiguous().numpy()


@pytest.mark.parametrize("zip_format", [True, False])
def test_both_torch_save_formats_equal_torch_load(tmp_path, zip_format):
    sd = state_dict()
    p = tmp_path / "m.pth"
    torch.save(sd, p, _use_new_zipfile_serialization=zip_format)
    got = gbtd.load(p)
    want = torch.load(p, weights_only=True)
    assert list(got) == list(want)
    for k, t in want.items():
        assert got[k].shape == tuple(t.shape), k
        assert got[k].dtype == expected(t).dtype, k
        np.testing.assert_array_equal(got[k], expected(t), err_msg=k)


def test_wrapped_checkpoints_and_other_formats(tmp_path):
    sd = {k: v for k, v in state_dict().items() if v.dtype in (torch.float32, torch.float64)}
    p = tmp_path / "wrapped.pt"
    torch.save({"state_dict": sd, "epoch": 3}, p)
    got = gbtd.load(p)
    for k, t in sd.items():
        np.testing.assert_array_equal(got[k], t.contiguous().numpy())
    from safetensors.numpy import save_file

    arrays = {k: t.contiguous().numpy() for k, t in sd.items()}
    save_file(arrays, tmp_path / "m.safetensors")
    got = gbtd.load(tmp_path / "m.safetensors")
    assert sorted(got) == sorted(arrays)
    for k, a in arrays.items():
        np.testing.assert_array_equal(got[k], a)
    np.savez(tmp_path / "m.npz", **{k.replace(".", "_"): a for k, a in arrays.items()})
    got = gbtd.load(tmp_path / "m.npz")
    for k, a in arrays.items():
        np.testing.assert_array_equal(got[k.replace(".", "_")], a)
    np.save(tmp_path / "x.npy", arrays["conv.weight"])
    np.testing.assert_array_equal(gbtd.load(tmp_path / "x.npy")[""], arrays["conv.weight"])


class Payload:
    """Unpickling this runs a shell command, as a malicious checkpoint would."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_malicious_pickle_is_refused_and_not_run(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(2), "x": Payload(marker)}, p, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(OSError, match="system"):
        gbtd.load(p)
    assert not marker.exists(), "gbtd ran code from the checkpoint"
    # The same file does run the command under Python's own unpickler: the test is real.
    torch.load(p, weights_only=False)
    assert marker.exists()


def test_missing_truncated_and_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        gbtd.load(tmp_path / "none.pth")
    p = tmp_path / "m.pth"
    torch.save(state_dict(), p)
    data = p.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError):
        gbtd.load(tmp_path / "cut.pth")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(OSError, match="unknown file type"):
        gbtd.load(tmp_path / "x.txt")


def test_load_needs_no_torch(tmp_path):
    p = tmp_path / "m.pth"
    torch.save(state_dict(), p)
    code = (
        "import sys, gbtd; d = gbtd.load(sys.argv[1]); "
        "assert 'torch' not in sys.modules, 'torch imported'; print(len(d))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(len(state_dict()))


def test_save_round_trip(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.int64), "c": np.array([True, False])}
    gbtd.save(tmp_path / "s.safetensors", arrays, {"note": "x"})
    got = gbtd.load(tmp_path / "s.safetensors")
    for k, a in arrays.items():
        np.testing.assert_array_equal(got[k], a)
    from safetensors import safe_open

    with safe_open(tmp_path / "s.safetensors", "np") as f:
        assert f.metadata() == {"note": "x"}
    with pytest.raises(OSError, match="does not exist"):
        gbtd.save(tmp_path / "missing" / "s.safetensors", arrays)
    assert not (tmp_path / "missing").exists()
