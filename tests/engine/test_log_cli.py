"""``roomcast replay``, ``roomcast log verify`` and ``roomcast log stats``."""

from __future__ import annotations

import datetime
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from roomcast.engine.cli import build_parser, format_record, main
from roomcast.engine.log import LogConfig, iter_records, open_event_log, record_to_json
from roomcast.engine.log.segment import segment_path
from roomcast.protocol import LogRecord, RecordKind

from .log_helpers import T0, record

JOIN, LEAVE, MESSAGE = RecordKind.JOIN, RecordKind.LEAVE, RecordKind.MESSAGE

# A scripted session: (namespace, room, offset, kind, sender, event, args)
SCRIPT: list[tuple[str, str, int, RecordKind, str, str | None, tuple[object, ...]]] = [
    ("/", "lobby", 1, JOIN, "ann", None, ()),
    ("/", "lobby", 2, MESSAGE, "ann", "say", ("hello", b"\x00\x01")),
    ("/", "games", 1, JOIN, "bob", None, ()),
    ("/", "lobby", 3, JOIN, "bob", None, ()),
    ("/", "lobby", 4, MESSAGE, "bob", "say", ("hi ann", {"mood": "good"})),
    ("/", "games", 2, MESSAGE, "bob", "move", ([1, 2],)),
    ("/chat", "lobby", 1, MESSAGE, "cat", "say", ("other namespace",)),
    ("/", "lobby", 5, LEAVE, "ann", None, ()),
    ("/", "lobby", 6, MESSAGE, "bob", "say", ("bye",)),
]


def make_log(directory: Path) -> list[LogRecord]:
    """Record the scripted session; return its records as stored."""

    async def run() -> list[LogRecord]:
        config = LogConfig(
            directory=directory,
            fsync="never",
            segment_bytes=400,
            segment_age=None,
            retention_age=None,
        )
        stored = []
        async with open_event_log(config, clock=lambda: T0 - 1) as log:
            for index, (ns, room, offset, kind, sender, event, args) in enumerate(SCRIPT):
                rec = record(
                    offset,
                    namespace=ns,
                    room=room,
                    kind=kind,
                    sender=sender,
                    event=event,
                    args=args,  # type: ignore[arg-type]
                    time=T0 + index,
                )
                stored.append(await log.append(rec))
        return stored

    return trio.run(run)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--log-level", "WARNING", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def script_records(stored: list[LogRecord], **where: object) -> list[LogRecord]:
    return [r for r in stored if all(getattr(r, k) == v for k, v in where.items())]


def test_replay_prints_exactly_the_sessions_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = make_log(tmp_path)
    everything = list(iter_records(tmp_path))
    assert [r for r in everything if r.namespace] == stored
    code, out, err = run_cli(capsys, "replay", str(tmp_path))
    assert (code, err) == (0, "")
    assert out.splitlines() == [f"# epoch {stored[0].epoch}"] + [
        format_record(r) for r in everything
    ]
    assert out.splitlines()[4] == (
        "2023-11-14T22:13:21.000Z / lobby #2 message from ann say [\"hello\", b'\\x00\\x01']"
    )


@pytest.mark.parametrize(
    ("argv", "where", "offsets"),
    [
        (["--room", "lobby", "--namespace", "/"], {"namespace": "/", "room": "lobby"}, None),
        (["--room", "lobby"], {"room": "lobby"}, None),
        (["--namespace", "/", "--room", "lobby", "--since", "2", "--until", "4"], {}, (2, 4)),
        (["--namespace", "/", "--room", "lobby", "--since", "5"], {}, (5, 6)),
        (["--namespace", "/", "--room", "games", "--until", "1"], {}, (1, 1)),
    ],
)
def test_replay_filters_by_room_and_offset(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    where: dict[str, object],
    offsets: tuple[int, int] | None,
) -> None:
    stored = make_log(tmp_path)
    code, out, _ = run_cli(capsys, "replay", str(tmp_path), "--json", *argv)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    if offsets is not None:
        ns, room = argv[1], argv[3]
        low, high = offsets
        expected = [
            r for r in script_records(stored, namespace=ns, room=room) if low <= r.offset <= high
        ]
    else:
        expected = script_records(stored, **where)
    assert expected
    assert lines == [record_to_json(r) for r in expected]


def test_replay_filters_by_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stored = make_log(tmp_path)
    iso = datetime.datetime.fromtimestamp(T0 + 2, tz=datetime.UTC).isoformat()
    code, out, _ = run_cli(
        capsys, "replay", str(tmp_path), "--json", "--since", iso, "--until", f"@{T0 + 4}"
    )
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        record_to_json(r) for r in stored[2:5]
    ]
    naive = datetime.datetime.fromtimestamp(T0 + 8, tz=datetime.UTC).replace(tzinfo=None)
    code, out, _ = run_cli(capsys, "replay", str(tmp_path), "--json", "--since", str(naive))
    # SERVER_STOP is dated by the log's clock (T0 - 1): out of range.
    assert [json.loads(line)["offset"] for line in out.splitlines()] == [6]


def test_replay_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["replay", str(tmp_path), "--since", "yesterday"])
    assert caught.value.code == 2
    assert "expected an offset" in capsys.readouterr().err
    code, _, err = run_cli(capsys, "replay", str(tmp_path / "missing"))
    assert code == 2
    assert "is not a directory" in err


def test_replay_reports_damage_and_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_log(tmp_path)
    seg = segment_path(tmp_path, 1)
    data = bytearray(seg.read_bytes())
    data[12] ^= 0xFF  # inside the first record (EPOCH)
    seg.write_bytes(bytes(data))
    code, out, err = run_cli(capsys, "replay", str(tmp_path), "--namespace", "/", "--json")
    assert code == 1
    assert "damaged record: 00000000000000000001.seg byte 0: corrupt: checksum mismatch" in err
    assert len(out.splitlines()) == 8  # every record of namespace "/" is still printed


def test_replay_against_an_app(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_log(tmp_path / "log")
    app = tmp_path / "replay_cli_app.py"
    app.write_text(
        "from roomcast.engine import Server\n"
        "def build():\n"
        "    server = Server()\n"
        "    @server.on('say')\n"
        "    async def say(socket, text, *rest):\n"
        "        return f'{socket.sid} said {text}'\n"
        "    return server\n"
    )
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(
        capsys,
        "replay",
        str(tmp_path / "log"),
        "--namespace",
        "/",
        "--room",
        "lobby",
        "--app",
        "replay_cli_app:build",
    )
    assert code == 0
    assert '    => ["ann said hello"]' in out.splitlines()
    assert '    => ["bob said bye"]' in out.splitlines()
    code, out, _ = run_cli(
        capsys,
        "replay",
        str(tmp_path / "log"),
        "--room",
        "games",
        "--app",
        "replay_cli_app:build",
        "--json",
    )
    steps = [json.loads(line) for line in out.splitlines()]
    assert [s["action"] for s in steps] == ["join", "event"]
    assert steps[1]["note"] == "no handler for 'move'"
    sys.modules.pop("replay_cli_app", None)


def strict_json(line: str) -> object:
    """``line`` parsed as standard JSON (no bare NaN or Infinity)."""

    def refuse(constant: str) -> object:
        raise AssertionError(f"not JSON: {constant} in {line}")

    return json.loads(line, parse_constant=refuse)


def test_replay_app_json_writes_bytes_as_base64_and_floats_as_documented(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def write_log() -> None:
        config = LogConfig(directory=tmp_path / "log", fsync="never")
        async with open_event_log(config) as log:
            await log.append(record(1, room="lobby", kind=JOIN, sender="ann"))
            args = ("hello", b"\x00\x01", math.nan)
            await log.append(
                record(2, room="lobby", kind=MESSAGE, sender="ann", event="say", args=args)
            )

    trio.run(write_log)
    app = tmp_path / "replay_json_app.py"
    app.write_text(
        "from roomcast.engine import Server\n"
        "def build():\n"
        "    server = Server()\n"
        "    @server.on('say')\n"
        "    async def say(socket, text, data, number):\n"
        "        await socket.emit('heard', data)\n"
        "        return (text, data)\n"
        "    return server\n"
    )
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(
        capsys, "replay", str(tmp_path / "log"), "--app", "replay_json_app:build", "--json"
    )
    sys.modules.pop("replay_json_app", None)
    assert code == 0
    steps = [strict_json(line) for line in out.splitlines()]
    (say,) = [s for s in steps if isinstance(s, dict) and s["record"]["event"] == "say"]
    assert say["record"]["args"] == ["hello", {"$bytes": "AAE="}, {"$float": "nan"}]
    assert say["result"] == ["hello", {"$bytes": "AAE="}]
    (delivery,) = say["deliveries"]
    assert delivery["packet"]["args"] == [{"$bytes": "AAE="}]


def test_log_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_log(tmp_path)
    code, out, _ = run_cli(capsys, "log", "verify", str(tmp_path))
    assert code == 0
    assert out.startswith(f"{tmp_path}: OK: ")
    code, out, _ = run_cli(capsys, "log", "verify", str(tmp_path), "--json")
    assert json.loads(out)["ok"] is True

    seg = segment_path(tmp_path, 2)
    data = bytearray(seg.read_bytes())
    data[30] ^= 0x01
    seg.write_bytes(bytes(data))
    code, out, _ = run_cli(capsys, "log", "verify", str(tmp_path))
    assert code == 1
    assert "DAMAGED: 1 problem(s)" in out
    assert "00000000000000000002.seg byte 0: corrupt: checksum mismatch" in out
    code, out, _ = run_cli(capsys, "log", "verify", str(tmp_path), "--json")
    assert code == 1
    problem = json.loads(out)["problems"][0]
    assert (problem["segment"], problem["position"]) == (2, 0)


def test_log_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stored = make_log(tmp_path)
    code, out, _ = run_cli(capsys, "log", "stats", str(tmp_path))
    assert code == 0
    assert f"epoch      {stored[0].epoch} since 2023-11-14T22:13:19.000Z (new log)" in out
    assert "  / lobby: 6 record(s), offsets 1..6" in out
    assert "kinds      epoch 1, join 3, leave 1, message 5, server_start 1, server_stop 1" in out
    code, out, _ = run_cli(capsys, "log", "stats", str(tmp_path), "--json")
    stats = json.loads(out)
    assert stats["records"] == len(SCRIPT) + 3
    assert {"namespace": "/chat", "room": "lobby", "first_offset": 1, "last_offset": 1,
            "count": 1} in stats["rooms"]  # fmt: skip


def test_the_installed_command_runs(tmp_path: Path) -> None:
    make_log(tmp_path)
    script = Path(sys.executable).parent / "roomcast"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "roomcast.engine.cli"]
    result = subprocess.run(
        [*command, "log", "verify", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": OK: " in result.stdout
