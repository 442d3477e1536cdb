"""`rtaa fake-deepgram --print-env node|python`: a process whose Deepgram URL is hardcoded to production
(wss://api.deepgram.com) reaches the emulator unedited. Real clients in real child processes: the Python
deepgram-sdk and websockets (asyncio and sync), and @deepgram/sdk from npm under Node (CommonJS and ES
modules). Each child also loads a guard that refuses any connection off loopback, so a broken redirect
fails the test instead of calling the real service."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from helpers.node import NODE_GUARD, NODE_SDK
from rtaa_cli.emulator import EmulatorConfig
from rtaa_cli.emulator.thread import start_in_thread

RTAA = [sys.executable, "-c", "from rtaa_cli.cli import main; main()"]
CHILD_TIMEOUT_S = 120  # safety net only: each child streams ~3 s of audio


PY_GUARD = '''
import socket
_getaddrinfo = socket.getaddrinfo
def _loopback_only(host, *args, **kwargs):
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise OSError(f"test guard: refused a connection to {host}")
    return _getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = _loopback_only
'''

PY_APP = PY_GUARD + '''
import asyncio, json, math, struct
import websockets
from deepgram import DeepgramClient
from websockets.sync.client import connect as sync_connect

frame = b"".join(struct.pack("<h", int(8000 * math.sin(i / 5))) for i in range(288))  # 36 ms at 8 kHz
out = {}
client = DeepgramClient(api_key="k")  # no environment: the SDK's production URL
with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=8000, tag="py-sdk") as conn:
    for _ in range(40):
        conn.send_media(frame)
    conn.send_close_stream()
    out["sdk"] = sum(1 for _ in conn)

URL = "wss://api.deepgram.com/v1/listen?encoding=linear16&sample_rate=8000&tag="
async def with_asyncio():
    async with websockets.connect(URL + "py-asyncio", additional_headers={"Authorization": "Token k"}) as ws:
        for _ in range(20):
            await ws.send(frame)
        await ws.send('{"type":"CloseStream"}')
        return len([m async for m in ws])
out["asyncio"] = asyncio.run(with_asyncio())
with sync_connect(URL + "py-sync", additional_headers={"Authorization": "Token k"}) as ws:
    ws.send(frame)
    ws.send('{"type":"CloseStream"}')
    out["sync"] = sum(1 for _ in ws)
print(json.dumps(out))
'''

NODE_APP = r'''
(async () => {
  const client = new DeepgramClient({ apiKey: 'k' }); // no baseUrl: the SDK's production URL
  const conn = await client.listen.v1.connect({ model: 'nova-3', encoding: 'linear16', sample_rate: 8000, tag: TAG });
  let messages = 0;
  conn.on('message', () => { messages += 1; });
  const closed = new Promise((resolve) => conn.on('close', (event) => resolve(event && event.code)));
  conn.connect();
  await conn.waitForOpen();
  const frame = Buffer.alloc(576);
  for (let i = 0; i < 40; i++) {
    for (let j = 0; j < 288; j++) frame.writeInt16LE(Math.round(8000 * Math.sin((i * 288 + j) / 5)), j * 2);
    conn.sendMedia(frame);
  }
  conn.sendCloseStream({ type: 'CloseStream' });
  const code = await closed;
  console.log(JSON.stringify({ messages, code }));
  process.exit(0);
})().catch((err) => { console.error('app error:', err && err.message); process.exit(1); });
'''


def _port(handle) -> int:
    return urlsplit(handle.url).port


@pytest.fixture
def emulator():
    handle = start_in_thread(EmulatorConfig(api_key="k"))
    yield handle
    handle.stop()


def _env_from_print_env(runtime: str, port: int) -> dict[str, str]:
    """Run the documented `eval "$(rtaa fake-deepgram --print-env RUNTIME --port P)"` in a real shell."""
    cmd = f'eval "$({" ".join(RTAA[:2])} "{RTAA[2]}" fake-deepgram --print-env {runtime} --port {port})" && env -0'
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, check=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k not in ("NODE_OPTIONS", "PYTHONPATH")})
    return dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)


def _connections(emulator) -> dict[str, dict]:
    emulator.wait_quiet()
    return {c["interaction"]: c for c in emulator.stats()["connections"]}


def test_print_env_rejects_unknown_runtimes_and_port_zero() -> None:
    for args, message in ((["--print-env", "ruby"], "use one of python, node"),
                          (["--print-env", "node", "--port", "0"], "needs the emulator's real --port")):
        r = subprocess.run([*RTAA, "fake-deepgram", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_python_clients_with_the_production_url_reach_the_emulator(emulator, tmp_path) -> None:
    env = _env_from_print_env("python", _port(emulator))
    assert env["RTAA_DEEPGRAM_URL"] == f"ws://127.0.0.1:{_port(emulator)}"
    app = tmp_path / "app.py"
    app.write_text(PY_APP)
    r = subprocess.run([sys.executable, str(app)], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"rtaa redirect: wss://api.deepgram.com -> ws://127.0.0.1:{_port(emulator)}" in r.stderr
    counts = orjson.loads(r.stdout.strip().splitlines()[-1])
    assert counts["sdk"] >= 1 and counts["asyncio"] >= 1 and counts["sync"] >= 1, counts  # Metadata at least
    conns = _connections(emulator)
    assert {k: (c["close_code"], c["audio_bytes"]) for k, c in conns.items()} == {
        "py-sdk": (1000, 40 * 576), "py-asyncio": (1000, 20 * 576), "py-sync": (1000, 576)}


def test_python_redirect_leaves_other_hosts_alone(emulator, tmp_path) -> None:
    """Only the redirected host changes: a URL to the emulator itself connects as written."""
    env = _env_from_print_env("python", _port(emulator))
    app = tmp_path / "other.py"
    app.write_text(PY_GUARD + f'''
from websockets.sync.client import connect
with connect("ws://127.0.0.1:{_port(emulator)}/v1/listen?encoding=linear16&sample_rate=8000&tag=direct",
             additional_headers={{"Authorization": "Token k"}}) as ws:
    ws.send('{{"type":"CloseStream"}}')
    print(sum(1 for _ in ws))
''')
    r = subprocess.run([sys.executable, str(app)], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=env)
    assert r.returncode == 0 and "rtaa redirect:" not in r.stderr, r.stderr[-2000:]
    assert "direct" in _connections(emulator)


@pytest.fixture(scope="module")
def node_sdk(tmp_path_factory) -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: the Node redirect is not tested here")
    where = tmp_path_factory.mktemp("node")
    (where / "package.json").write_text('{"name": "redirect-test", "private": true}')
    r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", NODE_SDK],
                       cwd=where, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip(f"npm install {NODE_SDK} failed (is the npm registry reachable?): {r.stderr[-500:]}")
    (where / "guard.cjs").write_text(NODE_GUARD)
    return where


@pytest.mark.parametrize("module", ["cjs", "mjs"])
def test_node_deepgram_sdk_with_the_production_url_reaches_the_emulator(emulator, node_sdk, module) -> None:
    env = _env_from_print_env("node", _port(emulator))
    assert env["NODE_OPTIONS"].startswith("--require ") and env["NODE_OPTIONS"].endswith("preload.cjs")
    env["NODE_OPTIONS"] += f" --require {node_sdk / 'guard.cjs'}"
    header = ("const { DeepgramClient } = require('@deepgram/sdk');" if module == "cjs"
              else "import { DeepgramClient } from '@deepgram/sdk';")
    app = node_sdk / f"app.{module}"
    app.write_text(header + f"\nconst TAG = 'node-{module}';\n" + NODE_APP)
    r = subprocess.run(["node", str(app)], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
                       env=env, cwd=node_sdk)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"rtaa redirect: wss://api.deepgram.com -> ws://127.0.0.1:{_port(emulator)}" in r.stderr
    result = orjson.loads(r.stdout.strip().splitlines()[-1])
    assert result["code"] == 1000 and result["messages"] >= 1, result
    conn = _connections(emulator)[f"node-{module}"]
    assert (conn["close_code"], conn["audio_bytes"]) == (1000, 40 * 576)
