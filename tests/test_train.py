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


# ----------------------------------------------------------------------------- issue 16: the edges
def _tiny(digits, n_train=512, n_test=128):
    return Dataset(digits.x_train[:n_train], digits.y_train[:n_train], digits.x_test[:n_test],
                   digits.y_test[:n_test], name="digits-tiny")


def _all_policy_names():
    from lowprec.amp import policy_names

    _sr_policy()
    return policy_names()


@pytest.mark.parametrize("precision", _all_policy_names())
def test_every_registered_policy_resumes_bit_for_bit(tmp_path, digits, precision):
    """Every stateful part of a policy (EMA observers, LSQ steps and signedness, ...) is in the checkpoint.
    (The uninterrupted run also warms up its kernels first: that changes no bit either.)"""
    ds = _tiny(digits, n_train=500)
    cfg = dict(precision=precision, seed=1, hidden=(8,), batch_size=256)
    kw = dict(dataset=ds, warm_up=False, plots=False)  # (plots are tested elsewhere; a checkpoint is what counts)
    full = T.train(T.TrainConfig(epochs=3, **cfg), str(tmp_path / "full"), dataset=ds, warm_up=True, plots=False)
    T.train(T.TrainConfig(epochs=1, **cfg), str(tmp_path / "part"), **kw)
    resumed = T.train(T.TrainConfig(epochs=3, **cfg), resume=str(tmp_path / "part"), **kw)
    pa, pb = full.model.parameters(), resumed.model.parameters()
    assert len(pa) == len(pb)
    for a, b in zip(full.weights(), resumed.weights()):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    for sa, sb in zip(full.optimizer.state, resumed.optimizer.state):
        for a, b in zip(sa, sb):
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    from lowprec.train.loop import _policy_state

    sa, sb = _policy_state(full.model), _policy_state(resumed.model)
    assert repr(sa) == repr(sb)
    assert full.scaler.state_dict() == resumed.scaler.state_dict()
    assert full.step_rows == resumed.step_rows
    assert full.record["epochs"] == resumed.record["epochs"]


def test_minmax_observer_state_goes_into_the_checkpoint(tmp_path, digits):
    T.train(T.TrainConfig(precision="int8-qat-minmax", epochs=1, hidden=(8,), batch_size=256), str(tmp_path),
            dataset=_tiny(digits), warm_up=False)
    state = T.load_checkpoint(tmp_path)
    observers = [q["observer"] for q in state["policy_state"] if q is not None and q.get("observer")]
    assert len(observers) == 2 and all(o["count"] == 2 for o in observers)  # one activation quantizer per layer


def test_out_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    f = tmp_path / "existing.txt"
    f.write_text("keep me")
    for argv in (["train", "--epochs", "1", "--out", str(f), "--quiet"],
                 ["train", "--compare", "fp32", "--epochs", "1", "--out", str(f), "--quiet"],
                 ["train", "--epochs", "1", "--out", str(f / "sub"), "--quiet"],
                 ["study", "formats", "--quick", "--out", str(f)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--out" in err and str(f) in err and "Traceback" not in err, err
    assert f.read_text() == "keep me"
    with pytest.raises(ValueError, match="is an existing file"):
        T.train(T.TrainConfig(epochs=1), str(f))


def test_checkpoint_missing_keys_and_appended_bytes(tmp_path, capsys):
    path = tmp_path / "checkpoint.ckpt"
    T.save_checkpoint(path, {"epoch": 3, "w": [np.float32([1.0])]})
    with pytest.raises(T.CheckpointError, match="not a training checkpoint.*lacks 'config'"):
        T.train(T.TrainConfig(epochs=5), resume=str(path))
    assert cli.main(["train", "--resume", str(tmp_path), "--epochs", "5", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lacks 'config'" in err and "KeyError" not in err
    T.train(T.TrainConfig(epochs=1, hidden=(8,), batch_size=512), str(tmp_path), warm_up=False)
    state = T.load_checkpoint(path)
    del state["optimizer"]["steps"]
    T.save_checkpoint(path, state)
    with pytest.raises(T.CheckpointError, match="does not hold the training state.*KeyError: 'steps'"):
        T.train(T.TrainConfig(epochs=2), resume=str(path), warm_up=False)
    T.save_checkpoint(path, {"epoch": 3})
    with open(path, "ab") as f:
        f.write(b"garbage")
    with pytest.raises(T.CheckpointError, match="has 7 extra bytes appended") as info:
        T.load_checkpoint(path)
    assert "truncated" not in str(info.value)


def test_stale_temporaries_of_dead_writers_are_removed_at_the_next_save(tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f".checkpoint.ckpt.tmp{dead.pid}"
        alive = tmp_path / f".checkpoint.ckpt.tmp{live.pid}"
        other = tmp_path / f".other.ckpt.tmp{dead.pid}"
        for p in (stale, alive, other):
            p.write_bytes(b"x" * 100)
        T.save_checkpoint(tmp_path / "checkpoint.ckpt", {"epoch": 1})
        assert not stale.exists()
        assert alive.exists() and other.exists()  # a live writer's file, and another checkpoint's
        assert T.load_checkpoint(tmp_path)["epoch"] == 1
    finally:
        live.kill()
        live.wait()


def test_failed_write_leaves_no_temporary(tmp_path, monkeypatch):
    def crash(src, dst):
        raise OSError("simulated failure")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        T.save_checkpoint(tmp_path / "c.ckpt", {"a": 1})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_resume_refuses_differing_flags_and_says_what_epochs_do(tmp_path, capsys):
    out = tmp_path / "r"
    base = ["train", "--hidden", "8", "--batch-size", "512", "--quiet", "--seed", "2"]
    assert cli.main(base + ["--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    before = {p: (out / p).read_bytes() for p in sorted(os.listdir(out))}
    assert cli.main(["train", "--resume", str(out), "--precision", "bf16-mixed", "--lr", "0.1", "--epochs", "3",
                     "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--precision bf16-mixed (saved: fp32)" in err and "--lr 0.1 (saved: 0.05)" in err and "--epochs" in err
    assert cli.main(["train", "--resume", str(out), "--quiet"]) == 2  # the saved total (1) is done
    err = capsys.readouterr().err
    assert "already trained 1 epochs" in err and "--epochs above 1" in err
    assert cli.main(["train", "--resume", str(out), "--epochs", "1", "--quiet"]) == 2
    assert "--epochs 1 leaves nothing to train" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(out), "--compare", "fp32,bf16-mixed", "--quiet"]) == 2
    assert "cannot be combined with --compare" in capsys.readouterr().err
    assert {p: (out / p).read_bytes() for p in sorted(os.listdir(out))} == before  # refusals touch nothing
    # flags equal to the saved ones are fine; --epochs may change, and the run says so
    assert cli.main(["train", "--resume", str(out), "--seed", "2", "--hidden", "8", "--epochs", "2", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "--epochs 2 replaces the saved total of 1" in text
    assert len(json.loads((out / "run.json").read_text())["epochs"]) == 2


def test_a_run_of_skipped_steps_is_diagnosed_during_the_run(tmp_path, digits, capsys):
    """pure-fp16 with Adam at lr 1e-3: the first update overflows the fp16 weights' products, every later
    step is skipped; the run says so while it runs, naming the tensor and what to try."""
    rc = cli.main(["train", "--precision", "pure-fp16", "--optimizer", "adam", "--lr", "0.001", "--epochs", "1",
                   "--hidden", "16", "--batch-size", "128"])
    assert rc == 0
    cap = capsys.readouterr()
    warning = [line for line in cap.err.splitlines() if "consecutive steps skipped" in line]
    assert warning, cap.err
    assert "layer1.matmul (fp16, activation)" in warning[0] and "overflowed" in warning[0]
    assert "--lr" in warning[0] and "fp16-mixed" in warning[0]
    assert "consecutive steps skipped" in cap.out  # and the summary repeats it
    res = T.train(T.TrainConfig(precision="pure-fp16", optimizer="adam", lr=0.001, epochs=1, hidden=(16,),
                                batch_size=128), dataset=digits, warm_up=False)
    assert len(res.record["summary"]["diagnosis"]) == 1
    ok = T.train(T.TrainConfig(precision="fp16-mixed", epochs=1, **SMALL), dataset=digits, warm_up=False)
    assert ok.record["summary"]["diagnosis"] == []
    grads = T.train(T.TrainConfig(precision="fp16-mixed", loss_scale="static:1e30", epochs=1, **SMALL),
                    dataset=digits, warm_up=False).record["summary"]["diagnosis"]
    assert len(grads) == 1 and ".grad (fp16, activation_grad)" in grads[0] and "--loss-scale static" in grads[0]
    assert "forward pass" not in grads[0]


def test_every_train_option_has_help_and_its_default():
    import argparse

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    for action in sub._actions:
        if "-h" in action.option_strings:
            continue
        assert action.help, action.option_strings
        assert "(default:" in action.help, action.option_strings
    text = sub.format_help().split("options:", 1)[1]
    for flag, default in (("--lr", "0.05"), ("--batch-size", "64"), ("--seed", "0"), ("--momentum", "0.9"),
                          ("--weight-decay", "0.0"), ("--epochs", "30")):
        block = text.split("\n  " + flag, 1)[1].split("\n  --", 1)[0]
        assert f"(default: {default}" in " ".join(block.split()), flag


def test_warm_up_is_timed_apart_and_changes_no_bit(digits, capsys):
    ds = _tiny(digits)
    cfg = T.TrainConfig(precision="bf16-mixed", epochs=1, hidden=(8,), batch_size=256)
    a = T.train(cfg, dataset=ds, warm_up=True, quiet=False)
    err = capsys.readouterr().err
    assert "compiling kernels (first run only" in err
    assert err.index("compiling kernels") < err.index("training")  # its own phase, before the progress bar
    b = T.train(cfg, dataset=ds, warm_up=False)
    for x, y in zip(a.weights(), b.weights()):
        np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))
    assert a.step_rows == b.step_rows
    s = a.record["summary"]
    assert s["compile_time_s"] > 0 and s["wall_time_s"] > 0
    assert b.record["summary"]["compile_time_s"] == 0.0


def test_compare_reports_compile_time_apart_and_writes_a_figure(tmp_path, digits, capsys):
    rows = T.compare(["fp32", "fp16-mixed"], T.TrainConfig(epochs=2, hidden=(8,), batch_size=256),
                     out=str(tmp_path), dataset=_tiny(digits))
    assert all(r["compile_time_s"] >= 0 and r["wall_time_s"] > 0 for r in rows)
    table = T.format_table(rows)
    assert "| compile s | train s |" in table
    png = tmp_path / "compare.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.shape[0] > 500 and img.shape[1] > 800 and img[..., :3].std() > 0.05


def test_compare_figure_shows_every_policy_on_shared_axes(tmp_path, digits):
    from lowprec.train.report import _end_labels, plot_compare

    ds = _tiny(digits)
    cfg = dict(epochs=2, hidden=(8,), batch_size=256)
    runs = [T.train(T.TrainConfig(precision=p, **cfg), dataset=ds, warm_up=False)
            for p in ("fp32", "fp16-mixed", "bf16-mixed")]
    fig = plot_compare(str(tmp_path / "c.png"), runs)
    acc, loss, scale, under = fig.axes
    for ax in (acc, loss, scale, under):
        assert len(ax.get_lines()) >= 3
    assert [t.get_text().split(":")[0] for t in acc.get_legend().get_texts()] == ["fp32", "fp16-mixed", "bf16-mixed"]
    ys = np.concatenate([line.get_ydata() for line in acc.get_lines()])
    assert np.all((ys > 0) & (ys <= 100)) and acc.get_ylim()[0] < ys.min() <= ys.max() < acc.get_ylim()[1]
    assert scale.get_yscale() == "log"
    labels = [t.get_text() for t in scale.texts]  # dynamic scaling at 65536, none at 1: two labels
    assert any(t.startswith("65536: fp16-mixed") for t in labels) and any(t.startswith("1: fp32, bf16") for t in labels)
    assert any("fp16-mixed" in t.get_text() for t in under.texts)
    # end labels of close values share one label (they would overlap)
    assert _end_labels({257: ["a"], 253: ["b"], 0: ["c"]}, "{:,d}", False) == [(0, "0: c"), (257, "a 257, b 253")]


# ----------------------------------------------------------------------------- issue 15: --hardware
def test_cli_compares_a_policy_across_hardware(tmp_path, capsys):
    out = tmp_path / "hw"
    rc = cli.main(["train", "--compare", "fp8-current", "--hardware", "ideal,nv-hopper", "--epochs", "1",
                   "--hidden", "16", "--batch-size", "256", "--out", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| fp8-current |" in text and "| fp8-current@nv-hopper |" in text
    rows = json.loads((out / "compare.json").read_text())
    assert [r["policy"] for r in rows] == ["fp8-current", "fp8-current@nv-hopper"]
    rec = json.loads((out / "fp8-current@nv-hopper" / "run.json").read_text())
    assert rec["config"]["hardware"] == "nv-hopper"
    assert rec["policy"]["hardware"].startswith("nv-hopper-fp8 (forward fp8_e4m3fn x fp8_e4m3fn, dgrad fp8_e5m2")
    assert json.loads((out / "fp8-current" / "run.json").read_text())["config"]["hardware"] is None
    assert cli.main(["train", "--precision", "fp8-current", "--hardware", "nv-hopper,nv-ada", "--quiet"]) == 2
    assert "goes with --compare" in capsys.readouterr().err
