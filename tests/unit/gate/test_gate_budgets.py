"""Budget files: names and values (pure), the table's class fallback, the snapshot rules
(last good value, reported once), and the watcher on a directory kubelet updates."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stopbudget.gate import budgets
from stopbudget.gate.budgets import Changed, Invalid, Key, Snapshot, Table, apply
from stopbudget.gate.caps import Caps, Kind
from stopbudget.gate.watcher import BudgetWatcher, read_directory
from tests.support.kubelet import ConfigMapVolume
from tests.support.waiting import eventually

OUT, THINK = Kind.OUTPUT, Kind.THINKING


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("default.output", Key("default", OUT)),
        ("default.thinking", Key("default", THINK)),
        ("chat-premium.output", Key("chat-premium", OUT)),
        ("a.b.output", Key("a.b", OUT)),
        ("x_1.thinking", Key("x_1", THINK)),
        ("..data", None),
        ("..2026_12_02_01_00_01.000000001", None),
        (".output", None),
        ("..output", None),
        ("default.Output", None),
        ("default.output.bak", None),
        ("default", None),
        ("default.input", None),
    ],
)
def test_file_names(name: str, key: Key | None) -> None:
    assert budgets.parse_name(name) == key


@pytest.mark.parametrize(
    ("raw", "value"),
    [(b"256", 256), (b"256\n", 256), (b" 1 ", 1), (b"0128", 128), (b"2147483647", 2**31 - 1)],
)
def test_good_values(raw: bytes, value: int) -> None:
    assert budgets.parse_value(raw) == value


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "holds '(empty)', not a positive integer"),
        (b"0", "holds 0: a budget is between 1 and"),
        (b"-5", "holds '-5', not a positive integer"),
        (b"+5", "not a positive integer"),
        (b"12.5", "not a positive integer"),
        (b"256 tokens", "not a positive integer"),
        (b'{"max_new_tokens": 256}', "the budget alone, e.g. 256"),
        (b"2147483648", "a budget is between 1 and 2147483647"),
        (b"\xff\xfe", "not ASCII"),
        (b"1" * 65, "more than 64 bytes"),
    ],
)
def test_bad_values_say_what_to_write(raw: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 256|between 1") as caught:
        budgets.parse_value(raw)
    assert problem in str(caught.value)


# --------------------------------------------------------------------------- the table


def test_each_kind_falls_back_to_default_on_its_own() -> None:
    table = Table(
        {
            Key("default", OUT): 512,
            Key("default", THINK): 2048,
            Key("premium", OUT): 1024,
            Key("lite", THINK): 128,
        }
    )
    assert table.resolve(None) == ("default", Caps(512, 2048))
    assert table.resolve("default") == ("default", Caps(512, 2048))
    assert table.resolve("premium") == ("premium", Caps(1024, 2048))
    assert table.resolve("lite") == ("lite", Caps(512, 128))
    # a class without files is default's, and is labelled default (bounded label set)
    assert table.resolve("unknown") == ("default", Caps(512, 2048))
    assert table.resolve("") == ("default", Caps(512, 2048))


def test_no_files_no_caps() -> None:
    assert Table().resolve("x") == ("default", Caps())
    assert Table({Key("premium", OUT): 10}).resolve(None) == ("default", Caps())


# --------------------------------------------------------------------------- snapshots


def test_changes_and_removals_are_events() -> None:
    first, events = apply(Snapshot(), {"default.output": b"256", "..data": b"x"})
    assert events == [Changed(Key("default", OUT), None, 256)]
    second, events = apply(first, {"default.output": b"128", "a.thinking": b"64"})
    assert events == [Changed(Key("a", THINK), None, 64), Changed(Key("default", OUT), 256, 128)]
    assert second.table.resolve("a") == ("a", Caps(128, 64))
    third, events = apply(second, {"a.thinking": b"64"})
    assert events == [Changed(Key("default", OUT), 128, None)]
    assert third.table.resolve(None) == ("default", Caps())
    same, events = apply(third, {"a.thinking": b"64"})
    assert events == []
    assert same.table is third.table


def test_a_bad_file_keeps_the_last_good_value_and_is_reported_once() -> None:
    good, _ = apply(Snapshot(), {"default.output": b"256"})
    bad, events = apply(good, {"default.output": b"lots"})
    assert events == [Invalid(Key("default", OUT), events[0].problem, 256)]  # type: ignore[union-attr]
    assert bad.table.resolve(None)[1].output == 256
    again, events = apply(bad, {"default.output": b"lots"})
    assert events == []  # the same problem is not reported again
    other, events = apply(again, {"default.output": b"-1"})
    assert len(events) == 1  # a new problem is
    fixed, events = apply(other, {"default.output": b"64"})
    assert events == [Changed(Key("default", OUT), 256, 64)]
    assert fixed.reported == {}
    _, events = apply(fixed, {"default.output": b"x"})
    assert len(events) == 1  # bad again after a good value: reported again


def test_a_bad_file_without_a_good_value_is_no_cap() -> None:
    snap, events = apply(Snapshot(), {"default.output": b"0", "default.thinking": b"300"})
    assert isinstance(events[0], Invalid)
    assert events[0].kept is None
    assert snap.table.resolve(None)[1] == Caps(None, 300)


def test_an_unreadable_file_is_a_bad_file() -> None:
    good, _ = apply(Snapshot(), {"default.output": b"256"})
    snap, events = apply(good, {"default.output": PermissionError(13, "Permission denied")})
    assert isinstance(events[0], Invalid)
    assert "cannot be read: Permission denied" in events[0].problem
    assert snap.table.resolve(None)[1].output == 256


@pytest.mark.slow
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["default.output", "default.thinking", "a.output", "b.thinking"]),
            st.one_of(
                st.integers(min_value=1, max_value=10**6).map(lambda v: str(v).encode()),
                st.sampled_from([b"", b"0", b"x", b"-3"]),
            ),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_the_table_holds_the_last_good_value_of_every_present_file(
    reads: list[dict[str, bytes]],
) -> None:
    snap = Snapshot()
    last_good: dict[str, int] = {}
    for files in reads:
        snap, _ = apply(snap, files)
        last_good = {n: v for n, v in last_good.items() if n in files}
        for name, raw in files.items():
            if raw.isdigit() and int(raw) > 0:
                last_good[name] = int(raw)
        assert {k.file: v for k, v in snap.table.values.items()} == last_good


# --------------------------------------------------------------------------- the watcher


def test_read_directory_follows_kubelets_symlinks(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path)
    volume.write({"default.output": "256", "premium.thinking": "1024", "other": "x"})
    assert (tmp_path / "..data").is_symlink()
    assert read_directory(tmp_path) == {"default.output": b"256", "premium.thinking": b"1024"}
    (tmp_path / "gone.output").symlink_to("..data/gone.output")  # dangling: a key mid-removal
    assert "gone.output" not in read_directory(tmp_path)


def test_read_directory_reports_an_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "default.output").mkdir()
    found = read_directory(tmp_path)
    assert isinstance(found["default.output"], IsADirectoryError)


async def test_watcher_applies_an_atomic_swap_without_a_restart(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path)
    volume.write({"default.output": "256"})
    watcher = BudgetWatcher(tmp_path, interval=0.01)
    watcher.load()
    assert watcher.table.resolve(None)[1] == Caps(256)
    before = watcher.table
    async with watcher.running():
        volume.write({"default.output": "128", "premium.output": "512"})

        async def table() -> Table:
            return watcher.table

        await eventually(table, lambda t: t.resolve("premium")[1] == Caps(512), 5)
        assert watcher.table.resolve(None)[1] == Caps(128)
        volume.write({"premium.output": "512"})  # a key removed
        await eventually(table, lambda t: t.resolve(None)[1] == Caps(), 5)
    assert before.resolve(None)[1] == Caps(256)  # a table in use never changes


async def test_watcher_logs_a_bad_file_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    volume = ConfigMapVolume(tmp_path)
    volume.write({"default.output": "256"})
    events: list[budgets.Event] = []
    watcher = BudgetWatcher(tmp_path, interval=0.01, on_event=events.append)
    watcher.load()
    with caplog.at_level(logging.WARNING, logger="stopbudget.gate.watcher"):
        async with watcher.running():
            volume.write({"default.output": "two hundred"})
            reads = watcher.reads

            async def progress() -> int:
                return watcher.reads

            await eventually(progress, lambda n: n >= reads + 5, 5)  # several polls saw it
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "budget file default.output holds 'two hundred', not a positive integer: write the "
        "budget alone, e.g. 256 (the configMap sink's default format {budget}); keeping 256"
    ]
    assert sum(isinstance(e, Invalid) for e in events) == 1
    assert watcher.table.resolve(None)[1] == Caps(256)


async def test_watcher_keeps_the_budgets_when_the_directory_goes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "budgets"
    directory.mkdir()
    (directory / "default.output").write_text("64")
    watcher = BudgetWatcher(directory, interval=0.01)
    watcher.load()
    os.rename(directory, tmp_path / "moved")
    with caplog.at_level(logging.ERROR, logger="stopbudget.gate.watcher"):
        async with watcher.running():
            reads = watcher.reads

            async def progress() -> int:
                return watcher.reads

            await eventually(progress, lambda n: n >= reads + 5, 5)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "cannot list the budget directory" in errors[0]
    assert watcher.table.resolve(None)[1] == Caps(64)
