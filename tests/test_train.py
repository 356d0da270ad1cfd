"""`lowprec train`: run record, compare table, bit-exact resume, atomic checkpoints, bad input, accuracy."""

import csv
import json
import os

import numpy as np
import pytest

from lowprec import cli
from lowprec import train as T
from lowprec.amp import get_policy, register_policy
from lowprec.data import Dataset, load_digits

SMALL = dict(hidden=(16,), batch_size=128)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models run fastest on one numba thread (results are the same bits on any count)."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


def test_cli_writes_record_csv_plots_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "--precision", "bf16-mixed", "--epochs", "2", "--hidden", "16", "--batch-size", "128",
                   "--out", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "bytes held per tensor role" in text and "master" in text
    rec = json.loads((out / "run.json").read_text())
    assert rec["policy"]["name"] == "bf16-mixed" and rec["policy"]["table"]["activation"] == ["bf16", "nearest_even"]
    assert len(rec["epochs"]) == 2 and 0.0 <= rec["summary"]["test_accuracy"] <= 1.0
    b = rec["summary"]["bytes_per_role"]
    n = rec["summary"]["n_params"]
    assert n == 64 * 16 + 16 + 16 * 10 + 10
    assert b["weight"] == 2 * n and b["master"] == 4 * n and b["optimizer_state"] == 4 * n  # bf16, fp32, fp32
    with open(out / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == rec["summary"]["steps"] == 2 * 12  # ceil(1438 / 128) = 12 steps per epoch
    assert {"loss", "accuracy", "loss_scale", "skipped", "activation_grad_underflow", "weight_grad_nan"} <= set(rows[0])
    with open(out / "telemetry.csv") as f:
        reader = csv.DictReader(f)
        events = list(reader)
    assert reader.fieldnames == ["step", "tensor", "role", "format", "underflow", "subnormal", "overflow", "nan"]
    per_step = {}
    for e in events:
        if e["role"] in ("activation_grad", "weight_grad"):
            per_step[int(e["step"])] = per_step.get(int(e["step"]), 0) + int(e["underflow"])
    for r in rows:  # the per-tensor rows add up to the per-role columns of steps.csv
        assert per_step.get(int(r["step"]), 0) == int(r["activation_grad_underflow"]) + int(r["weight_grad_underflow"])
    for png in ("loss.png", "accuracy.png", "loss_scale.png", "underflow.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "checkpoint.ckpt").exists()
    assert not [p for p in os.listdir(out) if ".tmp" in p]


def _sr_policy():
    """A user policy with stochastic rounding in several roles, so that resume must restore stream offsets."""
    name = "test-resume-sr"
    base = get_policy("pure-fp16")
    table = {**base.table, "weight": ("bf16", "stochastic"), "activation_grad": ("bf16", "stochastic"),
             "optimizer_state": ("bf16", "stochastic"), "activation": "bf16", "weight_used": "bf16",
             "weight_grad": "bf16"}
    try:
        return get_policy(name)
    except ValueError:
        return register_policy(base.replace(name=name, table=table, forward_accumulation="bf16-fp32",
                                            backward_accumulation="bf16-fp32"))


@pytest.mark.parametrize("precision", ["test-resume-sr", "fp16-mixed"])
def test_resume_equals_uninterrupted_bit_for_bit(tmp_path, digits, precision):
    _sr_policy()
    cfg = dict(precision=precision, seed=3, loss_scale="dynamic", **SMALL)
    full = T.train(T.TrainConfig(epochs=2, **cfg), str(tmp_path / "full"), dataset=digits)
    T.train(T.TrainConfig(epochs=1, **cfg), str(tmp_path / "part"), dataset=digits)
    resumed = T.train(T.TrainConfig(epochs=2, **cfg), resume=str(tmp_path / "part"), dataset=digits)
    for a, b in zip(full.weights(), resumed.weights()):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    for sa, sb in zip(full.optimizer.state, resumed.optimizer.state):
        for a, b in zip(sa, sb):
            np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    assert full.scaler.state_dict() == resumed.scaler.state_dict()
    assert full.step_rows == resumed.step_rows
    assert full.record["epochs"] == resumed.record["epochs"]


def test_cli_resume_extends_a_run(tmp_path, capsys):
    out = str(tmp_path / "r")
    args = ["train", "--hidden", "8", "--batch-size", "256", "--quiet", "--seed", "1"]
    assert cli.main(args + ["--epochs", "1", "--out", out]) == 0
    assert cli.main(args + ["--epochs", "2", "--resume", out]) == 0
    assert len(json.loads((tmp_path / "r" / "run.json").read_text())["epochs"]) == 2


def test_cli_trains_on_mnist_idx_files(tmp_path, capsys):
    from lowprec.data import MNIST_FILES, write_idx

    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 10)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = (rng.integers(0, 40, (n, 4, 4)) + 20 * labels[:, None, None]).astype(np.uint8)
        write_idx(tmp_path / (MNIST_FILES[f"{split}_images"] + ".gz"), images)
        write_idx(tmp_path / MNIST_FILES[f"{split}_labels"], labels)
    assert cli.main(["train", "--data", str(tmp_path), "--epochs", "1", "--hidden", "8", "--quiet"]) == 0
    assert "on mnist: test accuracy" in capsys.readouterr().out


def test_truncated_checkpoint_gives_a_clear_error(tmp_path, digits, capsys):
    out = tmp_path / "t"
    T.train(T.TrainConfig(epochs=1, **SMALL), str(out), dataset=digits)
    ckpt = out / "checkpoint.ckpt"
    blob = ckpt.read_bytes()
    ckpt.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(T.CheckpointError, match="is truncated: header announces"):
        T.load_checkpoint(ckpt)
    assert cli.main(["train", "--resume", str(out), "--epochs", "2", "--quiet"]) == 2
    assert "truncated" in capsys.readouterr().err
    ckpt.write_bytes(blob[:20])
    with pytest.raises(T.CheckpointError, match="shorter than its"):
        T.load_checkpoint(ckpt)
    ckpt.write_bytes(b"PK\x03\x04 something else")
    with pytest.raises(T.CheckpointError, match="not a lowprec checkpoint"):
        T.load_checkpoint(ckpt)
    corrupt = bytearray(blob)
    corrupt[-1] ^= 1
    ckpt.write_bytes(bytes(corrupt))
    with pytest.raises(T.CheckpointError, match="checksum mismatch"):
        T.load_checkpoint(ckpt)
    with pytest.raises(FileNotFoundError):
        T.load_checkpoint(tmp_path / "none.ckpt")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.ckpt"
    T.save_checkpoint(path, {"a": np.arange(3.0), "b": [1, {"c": np.ones(2, np.float32)}]})
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash before the rename")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        T.save_checkpoint(path, {"a": np.zeros(1000)})
    monkeypatch.undo()
    assert path.read_bytes() == before  # the latest checkpoint is still the old, complete one
    state = T.load_checkpoint(path)
    np.testing.assert_array_equal(state["a"], np.arange(3.0))
    assert state["b"][1]["c"].dtype == np.float32


def test_compare_table(tmp_path, digits, capsys):
    rows = T.compare(["fp32", "bf16-mixed"], T.TrainConfig(epochs=1, **SMALL), out=str(tmp_path), dataset=digits)
    assert [r["policy"] for r in rows] == ["fp32", "bf16-mixed"]
    table = T.format_table(rows)
    assert table.count("\n") == 3 and "| bf16-mixed |" in table
    assert (tmp_path / "fp32" / "run.json").exists() and (tmp_path / "compare.json").exists()
    n = 64 * 16 + 16 + 16 * 10 + 10
    # fp32: weights, gradients and momentum 4 bytes each; bf16-mixed: 2 (bf16 weights) + 4 (master)
    # + 4 (fp32 momentum) + 2 (bf16 gradients): the same 12 bytes per parameter
    assert rows[0]["param_bytes"] == rows[1]["param_bytes"] == 12 * n
    assert rows[0]["grad_underflow"] == 0


def test_bad_input_messages(tmp_path, capsys):
    assert cli.main(["train", "--precision", "fp13-mixed", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown precision policy 'fp13-mixed'" in err and "bf16-mixed" in err
    assert cli.main(["train", "--compare", "fp32,nope", "--quiet"]) == 2
    assert "unknown precision policy 'nope'" in capsys.readouterr().err
    assert cli.main(["train", "--loss-scale", "sometimes", "--quiet"]) == 2
    assert "unknown loss scale 'sometimes'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--loss-weight", "2^x", "--quiet"])
    assert "expected a number or 2^K" in capsys.readouterr().err
    assert cli.main(["train", "--data", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "--data must be 'digits' or a directory" in capsys.readouterr().err
    ds = load_digits()
    x = ds.x_train.copy()
    x[5, 3] = np.nan
    with pytest.raises(ValueError, match="x_train contains NaN"):
        T.train(T.TrainConfig(epochs=1), dataset=Dataset(x, ds.y_train, ds.x_test, ds.y_test))
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        T.train(T.TrainConfig(epochs=0), dataset=ds)


def test_extra_policy_modules_are_optional(monkeypatch):
    import importlib

    from lowprec.train import loop

    real = importlib.import_module

    def missing(name, *a):
        if name == "lowprec.quant.qat":
            raise ModuleNotFoundError("No module named 'lowprec.quant.qat'", name="lowprec.quant.qat")
        return real(name, *a)
    monkeypatch.setattr(importlib, "import_module", missing)
    loop._load_extra_policies()  # absent QAT module: skipped

    def broken(name, *a):
        raise ModuleNotFoundError("No module named 'scipy'", name="scipy")
    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError, match="scipy"):
        loop._load_extra_policies()  # a QAT module with a missing dependency is an error, not a skip


def test_package_reexports_each_module_public_names():
    """lowprec.train is a package of one concept per module; the package re-exports their public names."""
    from lowprec.train import checkpoint, cli as train_cli, loop, report

    homes = {loop: ["TrainConfig", "RunResult", "train", "evaluate", "compare"],
             checkpoint: ["save_checkpoint", "load_checkpoint", "CheckpointError"],
             report: ["write_run", "format_table"], train_cli: ["add_parser"]}
    for module, names in homes.items():
        assert set(names) <= set(module.__all__), module.__name__
        for name in names:
            assert getattr(T, name) is getattr(module, name), name
    assert sorted(T.__all__) == sorted(n for names in homes.values() for n in names)
    assert T.RunResult.__module__ == "lowprec.train.loop" and T.CheckpointError.__module__ == "lowprec.train.checkpoint"
    assert issubclass(T.CheckpointError, ValueError)  # the CLI reports it as a bad-input error (exit code 2)


@pytest.mark.parametrize("precision", ["fp8-mixed", "pure-fp16"])
def test_other_presets_train(digits, precision):
    res = T.train(T.TrainConfig(precision=precision, epochs=1, **SMALL), dataset=digits)
    assert np.isfinite(res.record["summary"]["train_loss"]) and res.test_accuracy > 0.3


def test_fp32_does_not_care_about_a_power_of_two_loss_weight(digits):
    """loss_weight 2**-20 with lr * 2**20 is the same training, bit for bit, in fp32."""
    a = T.train(T.TrainConfig(epochs=1, **SMALL), dataset=digits)
    b = T.train(T.TrainConfig(epochs=1, loss_weight=2.0 ** -20, lr=0.05 * 2 ** 20, **SMALL), dataset=digits)
    for x, y in zip(a.weights(), b.weights()):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_fp16_without_loss_scaling_loses_small_gradients(digits):
    """The documented configuration (docs/training.md): gradients 2**-20 times smaller than usual."""
    cfg = dict(epochs=6, hidden=(32,), seed=0, loss_weight=2.0 ** -20, lr=0.05 * 2 ** 20)
    fp32 = T.train(T.TrainConfig(precision="fp32", **cfg), dataset=digits).record["summary"]
    none = T.train(T.TrainConfig(precision="fp16-mixed", loss_scale="none", **cfg), dataset=digits).record["summary"]
    dyn = T.train(T.TrainConfig(precision="fp16-mixed", loss_scale="dynamic", **cfg), dataset=digits).record["summary"]
    assert none["grad_underflow"] > 0
    assert none["train_loss"] > 2 * fp32["train_loss"]
    assert none["test_accuracy"] < fp32["test_accuracy"] - 0.10
    assert abs(dyn["test_accuracy"] - fp32["test_accuracy"]) <= 0.01


def _accuracy_runs(epochs, hidden, digits):
    cfg = dict(epochs=epochs, hidden=hidden, seed=0, batch_size=64, lr=0.05)
    return {p: T.train(T.TrainConfig(precision=p, loss_scale=None if p == "fp32" else "dynamic", **cfg),
                       dataset=digits).test_accuracy for p in ("fp32", "fp16-mixed", "bf16-mixed")}


@pytest.mark.slow
@pytest.mark.ci
def test_mixed_precision_matches_fp32_on_digits_short(digits):
    acc = _accuracy_runs(6, (32,), digits)
    assert acc["fp32"] >= 0.95
    assert abs(acc["fp16-mixed"] - acc["fp32"]) <= 0.01
    assert abs(acc["bf16-mixed"] - acc["fp32"]) <= 0.01


@pytest.mark.slow
def test_mixed_precision_matches_fp32_on_digits_full(digits):
    acc = _accuracy_runs(30, (128,), digits)
    assert acc["fp32"] >= 0.95
    assert abs(acc["fp16-mixed"] - acc["fp32"]) <= 0.01
    assert abs(acc["bf16-mixed"] - acc["fp32"]) <= 0.01
