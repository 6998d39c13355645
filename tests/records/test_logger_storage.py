"""metrics.jsonl / samples.jsonl: whole lines only, torn lines tolerated and repaired, failed
writes raise StorageError naming the file; a failed plot only warns."""

import errno
import json
import os

import pytest

from rlvr import utils
from rlvr.records.logger import RunLogger
from rlvr.utils import StorageError, append_jsonl, atomic_write_text, read_jsonl


def _write(path, text):
    path.write_bytes(text.encode())


def test_a_torn_last_line_is_skipped_on_read(tmp_path):
    log = RunLogger(tmp_path)
    _write(log.metrics_path, '{"step": 1, "reward_mean": 0.1}\n{"step": 2, "reward_mean": 0.2}\n{"step": 3, "rew')
    assert [r["step"] for r in log.records()] == [1, 2]


def test_append_after_a_torn_line_drops_it_and_writes_whole_lines(tmp_path):
    log = RunLogger(tmp_path)
    _write(log.metrics_path, '{"step": 1}\n{"step": 2, "rew')
    log.log({"step": 2, "reward_mean": 0.5})
    assert log.metrics_path.read_text() == '{"step": 1}\n{"step": 2, "reward_mean": 0.5}\n'


def test_append_after_a_record_missing_only_its_newline_keeps_it(tmp_path):
    path = tmp_path / "m.jsonl"
    _write(path, '{"step": 1}\n{"step": 2}')
    append_jsonl(path, {"step": 3})
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]
    assert path.read_text().endswith('{"step": 3}\n')


def test_a_torn_multibyte_character_and_non_object_lines_do_not_break_reading(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes('{"step": 1}\n[1, 2]\n{"text": "é'.encode()[:-1])
    assert read_jsonl(path) == [{"step": 1}]
    append_jsonl(path, {"step": 2})
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_a_full_disk_during_an_append_leaves_no_partial_line(tmp_path, monkeypatch):
    log = RunLogger(tmp_path)
    log.log({"step": 1})
    before = log.metrics_path.read_bytes()

    def fsync(fd):  # the bytes reached the file, then the disk reports it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils.os, "fsync", fsync)
    with pytest.raises(StorageError) as err:
        log.log({"step": 2, "reward_mean": 0.25})
    msg = str(err.value)
    assert str(log.metrics_path) in msg and "no space left on device (ENOSPC)" in msg
    assert "choose another run.output_dir" in msg and "\n" not in msg
    assert log.metrics_path.read_bytes() == before  # rolled back to the last whole line
    monkeypatch.undo()
    log.log({"step": 2})
    assert [r["step"] for r in log.records()] == [1, 2]


def test_a_partial_write_is_rolled_back(tmp_path, monkeypatch):
    log = RunLogger(tmp_path)
    log.log({"step": 1})
    before = log.metrics_path.read_bytes()
    real_write = os.write

    def write(fd, data):  # a few bytes land, then the disk is full
        if len(data) > 3:
            real_write(fd, bytes(data[:3]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(utils.os, "write", write)
    with pytest.raises(StorageError):
        log.log({"step": 2, "reward_mean": 0.25})
    monkeypatch.undo()
    assert log.metrics_path.read_bytes() == before


def test_samples_are_appended_in_one_write_and_fail_cleanly(tmp_path, monkeypatch):
    log = RunLogger(tmp_path)
    log.log_samples(1, [{"prompt": "1+1=", "completion": "2"}, {"prompt": "2+2=", "completion": "4"}])
    assert [r["prompt"] for r in read_jsonl(log.samples_path)] == ["1+1=", "2+2="]
    real_open = os.open

    def deny(path, *a, **k):
        if str(path) == str(log.samples_path):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(utils.os, "open", deny)
    with pytest.raises(StorageError, match="permission denied .EACCES.") as err:
        log.log_samples(2, [{"prompt": "x"}])
    assert str(log.samples_path) in str(err.value)


def test_truncate_after_on_a_full_disk_keeps_the_file(tmp_path, monkeypatch):
    log = RunLogger(tmp_path)
    for s in (1, 2, 3):
        log.log({"step": s})
    before = log.metrics_path.read_text()
    monkeypatch.setattr(utils.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(StorageError) as err:
        log.truncate_after(1)
    assert str(log.metrics_path) in str(err.value)
    monkeypatch.undo()
    assert log.metrics_path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary file left
    log.truncate_after(1)
    assert [r["step"] for r in log.records()] == [1]


def test_atomic_write_text_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.md"
    path.write_text("old\n")
    def replace(a, b):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(utils.os, "replace", replace)
    with pytest.raises(StorageError, match="read-only file system") as err:
        atomic_write_text(path, "new\n")
    assert str(path) in str(err.value)
    monkeypatch.undo()
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["summary.md"]


def test_storage_error_is_a_one_line_value_error_for_the_cli(tmp_path, monkeypatch, capsys):
    """The CLI's ValueError handler prints it as one line and exits 2."""
    from rlvr import cli

    def fail(args):
        atomic_write_text(tmp_path / "nope" / "x", "y")

    monkeypatch.setattr(utils.Path, "mkdir", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    monkeypatch.setattr(cli, "_kl_table", fail)
    assert cli.main(["kl-table"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot write ") and "(ENOSPC)" in err and len(err.splitlines()) == 1


def test_find_storage_error_recognises_wrapped_write_failures(tmp_path):
    from safetensors import SafetensorError

    e = utils.find_storage_error(SafetensorError("I/O error: No space left on device (os error 28)"))
    assert e.errno == errno.ENOSPC
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        assert utils.find_storage_error(outer).errno == errno.EDQUOT
    assert utils.find_storage_error(TypeError("bug"), probe_dir=tmp_path) is None
    assert list(tmp_path.iterdir()) == []  # the probe file is removed


def test_a_failed_plot_only_warns(tmp_path, monkeypatch, capsys):
    from matplotlib.figure import Figure

    log = RunLogger(tmp_path)
    for s in range(1, 6):
        log.log({"step": s, "reward_mean": 0.1 * s, "accuracy": 0.1 * s})

    def savefig(self, fname, *a, **k):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig)
    assert log.plot() == []
    err = capsys.readouterr().err
    assert "warning: could not write plot" in err and "reward.png" in err and "(ENOSPC)" in err
    assert list((tmp_path / "plots").iterdir()) == []  # no temporary file left
    monkeypatch.undo()
    assert [p.name for p in log.plot()] == ["reward.png"]
