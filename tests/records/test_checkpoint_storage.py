"""A checkpoint write that fails (disk full, read-only folder) raises StorageError naming the
folder and the cause, leaves no temporary or state-less folder behind, and keeps the previous
checkpoint as the one --resume picks up."""

import errno
import os
import shutil
import subprocess

import pytest
import torch

from rlvr.records import checkpoint as ckpt_mod
from rlvr.records.checkpoint import STATE_FILE, latest_checkpoint, list_checkpoints, load_trainer_state, save_checkpoint
from rlvr.utils import StorageError

ARCH = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2}


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from rlvr.models.tiny import build_char_tokenizer, build_tiny_model

    tok = build_char_tokenizer()
    return build_tiny_model(tok, seed=0, **ARCH), tok


@pytest.fixture
def run_dir(tmp_path, model_and_tokenizer):
    """A run folder with one good checkpoint, step_000001."""
    model, tok = model_and_tokenizer
    d = tmp_path / "run"
    save_checkpoint(d, 1, model, tok, {"learner": {"x": torch.arange(3)}}, keep=1)
    return d


def _assert_previous_checkpoint_intact(run_dir, failed_step=2):
    from rlvr.models.load import load_model_and_tokenizer

    root = run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_000001"], "no temporary or partial folder left"
    assert list_checkpoints(run_dir) == [root / "step_000001"]
    assert latest_checkpoint(run_dir) == root / "step_000001"
    state = load_trainer_state(latest_checkpoint(run_dir), restore_rng=False)
    assert state["step"] == 1 and torch.equal(state["learner"]["x"], torch.arange(3))
    model, _ = load_model_and_tokenizer(latest_checkpoint(run_dir))
    assert sum(p.numel() for p in model.parameters()) > 0
    assert not (root / f"step_{failed_step:06d}").exists()


def _assert_message(err, run_dir, *words):
    msg = str(err.value)
    assert "\n" not in msg
    assert str(run_dir / "checkpoints" / "step_000002") in msg
    for w in words:
        assert w in msg, (w, msg)
    assert "step_000001 is intact" in msg and f"rlvr train --resume {run_dir}" in msg


def enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_after_model_save(run_dir, model_and_tokenizer, monkeypatch):
    model, tok = model_and_tokenizer
    monkeypatch.setattr(tok, "save_pretrained", enospc)  # model.safetensors written, then the disk is full
    with pytest.raises(StorageError) as err:
        save_checkpoint(run_dir, 2, model, tok, {"learner": {}}, keep=1)  # keep=1: would delete step 1
    _assert_message(err, run_dir, "no space left on device (ENOSPC)", "free some disk space",
                    "choose another run.output_dir")
    assert isinstance(err.value, ValueError) and isinstance(err.value.__cause__, OSError)
    _assert_previous_checkpoint_intact(run_dir)


@pytest.mark.parametrize("error", ["oserror", "torch_runtime_error"])
def test_disk_full_during_torch_save(run_dir, model_and_tokenizer, monkeypatch, error):
    model, tok = model_and_tokenizer
    real_save = torch.save

    def torn_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")  # some bytes land, then the write fails
        if error == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        # what torch.save really raises when its zip writer hits a full disk
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(StorageError) as err:
        save_checkpoint(run_dir, 2, model, tok, {"learner": {}}, keep=1)
    _assert_message(err, run_dir, "no space left" if error == "oserror" else "a write was cut short")
    monkeypatch.setattr(torch, "save", real_save)
    _assert_previous_checkpoint_intact(run_dir)


def test_safetensors_error_from_a_full_disk(run_dir, model_and_tokenizer, monkeypatch):
    from safetensors import SafetensorError

    model, tok = model_and_tokenizer

    def fail(folder, *a, **k):
        os.makedirs(folder, exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"\0" * 10)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(model, "save_pretrained", fail)
    with pytest.raises(StorageError) as err:
        save_checkpoint(run_dir, 2, model, tok, {"learner": {}}, keep=1)
    _assert_message(err, run_dir, "(ENOSPC)")
    _assert_previous_checkpoint_intact(run_dir)


def test_read_only_at_the_rename(run_dir, model_and_tokenizer, monkeypatch):
    model, tok = model_and_tokenizer
    real_replace = os.replace

    def replace(src, dst):
        if os.path.basename(src).startswith(".tmp_step_"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", replace)
    with pytest.raises(StorageError) as err:
        save_checkpoint(run_dir, 2, model, tok, {"learner": {}}, keep=1)
    _assert_message(err, run_dir, "read-only file system (EROFS)", "write to a writable disk")
    monkeypatch.setattr(ckpt_mod.os, "replace", real_replace)
    _assert_previous_checkpoint_intact(run_dir)


def test_permission_denied_creating_the_folder(tmp_path, model_and_tokenizer, monkeypatch):
    model, tok = model_and_tokenizer
    real_mkdir = type(tmp_path).mkdir

    def mkdir(self, *a, **k):
        if self.name == "checkpoints":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(type(tmp_path), "mkdir", mkdir)
    with pytest.raises(StorageError) as err:
        save_checkpoint(tmp_path / "run", 2, model, tok, {"learner": {}})
    msg = str(err.value)
    assert "permission denied (EACCES)" in msg and "make the folder writable" in msg
    assert "No earlier checkpoint" in msg


def test_replacing_an_existing_step_keeps_it_when_the_rename_fails(run_dir, model_and_tokenizer, monkeypatch):
    model, tok = model_and_tokenizer
    real_replace = os.replace

    def replace(src, dst):
        if os.path.basename(src).startswith(".tmp_step_"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", replace)
    with pytest.raises(StorageError):
        save_checkpoint(run_dir, 1, model, tok, {"learner": {"x": torch.zeros(1)}}, keep=1)
    monkeypatch.setattr(ckpt_mod.os, "replace", real_replace)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000001"]
    assert torch.equal(load_trainer_state(run_dir / "checkpoints" / "step_000001", False)["learner"]["x"],
                       torch.arange(3))


def test_a_bug_is_not_reported_as_a_storage_error(run_dir, model_and_tokenizer):
    model, tok = model_and_tokenizer

    def buggy_extra(folder):
        raise TypeError("a bug in save_extra")

    with pytest.raises(TypeError, match="a bug"):
        save_checkpoint(run_dir, 2, model, tok, {"learner": {}}, keep=1, save_extra=buggy_extra)
    _assert_previous_checkpoint_intact(run_dir)


def test_leftovers_of_a_crash_are_cleaned_up(run_dir, model_and_tokenizer):
    model, tok = model_and_tokenizer
    root = run_dir / "checkpoints"
    (root / ".tmp_step_000007").mkdir()
    (root / ".tmp_step_000007" / "model.safetensors").write_bytes(b"half")
    # a crash between the two renames of a re-save of step 1: step_000001 moved aside
    os.replace(root / "step_000001", root / ".old_step_000001")
    assert latest_checkpoint(run_dir) is None
    save_checkpoint(run_dir, 2, model, tok, {"learner": {}}, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step_000001", "step_000002"]
    assert latest_checkpoint(run_dir).name == "step_000002"


def test_a_successful_save_prunes_old_checkpoints_after_publishing(run_dir, model_and_tokenizer):
    model, tok = model_and_tokenizer
    save_checkpoint(run_dir, 2, model, tok, {"learner": {}}, keep=1)
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_000002"]
    assert all((p / STATE_FILE).exists() for p in (run_dir / "checkpoints").iterdir())


# ------------------------------------------------------------------ a real full / read-only disk

@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs mounted at tmp_path/fs (needs root with CAP_SYS_ADMIN; skipped, with the
    reason, elsewhere: the monkeypatched tests above cover the same paths)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs (the monkeypatched tests cover this)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_real_full_disk(small_fs, model_and_tokenizer):
    from rlvr.models.tiny import build_tiny_model

    model, tok = model_and_tokenizer
    run_dir = small_fs / "run"
    save_checkpoint(run_dir, 1, model, tok, {"learner": {"x": torch.arange(3)}}, keep=1)
    big = build_tiny_model(tok, seed=0, **{**ARCH, "hidden_size": 256, "intermediate_size": 512})  # ~2.7 MB
    with pytest.raises(StorageError) as err:
        save_checkpoint(run_dir, 2, big, tok, {"learner": {}}, keep=1)
    assert "(ENOSPC)" in str(err.value) and str(run_dir / "checkpoints" / "step_000002") in str(err.value)
    _assert_previous_checkpoint_intact(run_dir)


def test_real_read_only_folder(tmp_path, model_and_tokenizer):
    """chmod 0o500 as a normal user; a read-only tmpfs as root (chmod does not stop root)."""
    model, tok = model_and_tokenizer
    if os.geteuid() != 0:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        os.chmod(run_dir, 0o500)
        cleanup = lambda: os.chmod(run_dir, 0o700)  # noqa: E731
        want = "(EACCES)"
    else:
        if shutil.which("mount") is None:
            pytest.skip("root without mount: chmod cannot make a folder read-only for root")
        mnt = tmp_path / "ro"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mnt)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"root, and cannot mount a read-only tmpfs: {r.stderr.decode().strip()}")
        run_dir = mnt
        cleanup = lambda: subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # noqa: E731
        want = "(EROFS)"
    try:
        with pytest.raises(StorageError) as err:
            save_checkpoint(run_dir, 1, model, tok, {"learner": {}})
        assert want in str(err.value) and str(run_dir / "checkpoints") in str(err.value)
    finally:
        cleanup()
