"""``voxprompt serve``: argument checks, security defaults, and a real launch on a free loopback port."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from voxprompt.cli import main
from voxprompt.errors import UsageError
from voxprompt.server.app import security_warnings
from voxprompt.server.errors import BadRequest, NotFound, Unauthorized
from voxprompt.server.security import (
    check_api_key,
    read_api_key_file,
    resolve_data_path,
)
from voxprompt.server.settings import ServerSettings, is_loopback


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["serve", "--port", "0"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["serve", "--data-dir", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").write_text("\n")
    assert main(["serve", "--api-key-file", str(tmp_path / "empty")]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["serve", "--max-sessions", "0"]) == 2
    assert main(["serve", "--max-points", "0"]) == 2
    assert "--max-points" in capsys.readouterr().err
    assert main(["serve", "--restore-grace", "-1"]) == 2
    assert "--restore-grace" in capsys.readouterr().err
    assert main(["serve", "--precision", "fp64"]) == 2
    with pytest.raises(UsageError):
        ServerSettings(precision="int8").validate()
    assert ServerSettings(precision="bf16").validate().precision == "bf16"


def test_security_defaults(tmp_path):
    s = ServerSettings()
    assert s.host == "127.0.0.1" and s.loopback and not security_warnings(s)
    assert is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    warn = security_warnings(ServerSettings(host="0.0.0.0"))
    assert warn and "WITHOUT an API key" in warn[0]
    assert not security_warnings(ServerSettings(host="0.0.0.0", api_key="k"))
    key = tmp_path / "key"
    key.write_text("abc123\n")
    assert read_api_key_file(key) == "abc123"
    key.write_text("two words")
    with pytest.raises(UsageError):
        read_api_key_file(key)
    check_api_key(None, None)
    check_api_key("abc", "Bearer abc")
    check_api_key("abc", "bearer abc")
    for header in (None, "abc", "Basic abc", "Bearer abd", "Bearer "):
        with pytest.raises(Unauthorized):
            check_api_key("abc", header)


def test_data_paths_stay_inside(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.nii.gz").write_bytes(b"")
    (tmp_path / "out.nii.gz").write_bytes(b"")
    os.symlink(tmp_path / "out.nii.gz", root / "escape.nii.gz")
    os.symlink(root / "a" / "x.nii.gz", root / "inside.nii.gz")
    assert resolve_data_path(root, "a/x.nii.gz") == (root / "a" / "x.nii.gz").resolve()
    assert resolve_data_path(root, "inside.nii.gz") == (root / "a" / "x.nii.gz").resolve()
    for bad in ("../out.nii.gz", "a/../../out.nii.gz", "/etc/passwd", "escape.nii.gz", "a\\..\\..\\out.nii.gz",
                "", "a/\x00"):
        with pytest.raises(BadRequest):
            resolve_data_path(root, bad)
    with pytest.raises(NotFound):
        resolve_data_path(root, "a/none.nii.gz")
    with pytest.raises(BadRequest):
        resolve_data_path(None, "a/x.nii.gz")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_starts_and_answers(tmp_path):
    port = _free_port()
    key = tmp_path / "key"
    key.write_text("k3y")
    key.chmod(0o600)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "voxprompt", "serve", "--port", str(port), "--max-sessions", "1",
                             "--api-key-file", str(key), "--data-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        assert httpx.post(f"{url}/claim").status_code == 401
        auth = {"Authorization": "Bearer k3y"}
        r = httpx.post(f"{url}/claim", headers=auth)
        assert r.status_code == 200
        assert httpx.post(f"{url}/claim", headers=auth).status_code == 503
        caps = httpx.get(f"{url}/capabilities", headers=auth).json()
        assert caps["patch_size"] == [64, 64, 64]  # the default voxprompt-med3d-small
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "randomly initialised" in out or "voxprompt server on" in out


def test_verbose_after_the_subcommand(capsys):
    """Issue 20, item 11: ``serve --verbose`` / ``serve -v`` work like ``voxprompt -v serve``."""
    from voxprompt.cli import build_parser

    parser = build_parser()
    for argv in (["serve", "--verbose"], ["serve", "-v"], ["-v", "serve"], ["--verbose", "serve"]):
        assert parser.parse_args(argv).verbose is True, argv
    assert parser.parse_args(["serve"]).verbose is False
    assert parser.parse_args(["info", "x.nii.gz", "-v"]).verbose is True  # every subcommand takes it
    assert main(["serve", "--verbose", "--port", "0"]) == 2  # parsed; the bad port is what is refused
    err = capsys.readouterr().err
    assert "--port" in err and "unrecognized" not in err
