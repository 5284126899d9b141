"""Safe checkpoints: round trips of every kind of model state, refusal of pickled code."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recbole_ext.checkpoint import (
    decode_other_parameter,
    encode_other_parameter,
    load_checkpoint,
    save_checkpoint,
)


def test_other_parameter_round_trip():
    matrix = sp.csr_matrix(np.array([[0, 1.5, 0], [2.0, 0, 0]]))
    value = {
        "tensor": torch.arange(3),
        "array": np.array([[1.0, 2.0]]),
        "sparse": matrix,
        "nested": {1: [np.int64(4), (0.5, "x")]},
        "none": None,
    }
    encoded = encode_other_parameter(value)
    decoded = decode_other_parameter(encoded)
    assert torch.equal(decoded["tensor"], value["tensor"])
    np.testing.assert_array_equal(decoded["array"], value["array"])
    assert decoded["sparse"].format == "csr"
    np.testing.assert_array_equal(decoded["sparse"].toarray(), matrix.toarray())
    assert decoded["nested"] == {1: [4, (0.5, "x")]}
    assert decoded["none"] is None


def test_submodule_state_loads_into_the_live_module():
    source, target = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    decoded = decode_other_parameter(encode_other_parameter({"emb": source}), {"emb": target})
    assert decoded["emb"] is target
    torch.testing.assert_close(target.weight, source.weight)


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)
        self.item_cnt = np.array([3, 1, 2])

    def other_parameter(self):
        return {"item_cnt": self.item_cnt}


def test_checkpoint_loads_with_weights_only(tmp_path):
    model = _Model()
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, epoch=3, best_valid_score=float("-inf"))
    checkpoint = torch.load(path, weights_only=True)  # the strict loader accepts it
    assert checkpoint["epoch"] == 3 and checkpoint["format"] == "recbole_ext/1"
    torch.testing.assert_close(checkpoint["state_dict"]["linear.weight"], model.linear.weight)
    restored = decode_other_parameter(load_checkpoint(path)["other_parameter"])
    np.testing.assert_array_equal(restored["item_cnt"], model.item_cnt)


class _Exploit:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(_Exploit.marker),))


def test_checkpoint_with_code_is_refused_and_never_runs(tmp_path):
    _Exploit.marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": _Exploit()}, path)
    with pytest.raises(ValueError, match="not a safe recbole-ext checkpoint"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    # the same bytes loaded by plain pickle would have run the payload
    with open(path, "rb") as f:
        torch.load(f, weights_only=False)
    assert (tmp_path / "pwned").exists()


def test_recbole_style_checkpoint_with_pickled_objects_is_refused(tmp_path):
    from recbole.utils import ModelType

    path = tmp_path / "recbole.pth"
    torch.save({"config": {"MODEL_TYPE": ModelType.SEQUENTIAL}, "state_dict": {}}, path)
    with pytest.raises(ValueError, match="re-saved"):
        load_checkpoint(path)
