"""Issue 12: a real third-party client reads the feature fields from the emulator: Node's @deepgram/sdk
(from npm, in a child process) streams fixtures/audio/call.wav with diarize, detect_entities, numerals,
language=multi and search, and what its message events carry is checked here. Skipped, with the reason,
when node/npm are missing or the package cannot be installed."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import orjson
import pytest
from helpers.node import NODE_GUARD, NODE_SDK
from helpers.emulator import call_audio

from rtaa_cli.emulator import EmulatorConfig
from rtaa_cli.emulator.thread import start_in_thread

CHILD_TIMEOUT_S = 120  # safety net only: each stream is ~10 s of audio sent as fast as the socket takes it

# One stream per argv JSON options object; prints one JSON line per stream: the messages' feature fields.
NODE_APP = r'''
const { DeepgramClient } = require('@deepgram/sdk');
const fs = require('fs');
const [url, audioPath, ...streams] = process.argv.slice(2);
const http = url.replace('ws://', 'http://');
const client = new DeepgramClient({ apiKey: 'k', environment: { base: http, production: url, agent: url, agentRest: http } });
const audio = fs.readFileSync(audioPath);

async function stream(options) {
  const conn = await client.listen.v1.connect({ model: 'nova-3', encoding: 'linear16', sample_rate: 8000,
                                                reconnectAttempts: 0, ...options });
  const out = { finals: [], interims: 0, metadata: 0 };
  conn.on('message', (m) => {
    if (m.type === 'Metadata') out.metadata += 1;
    if (m.type !== 'Results') return;
    if (!m.is_final) { out.interims += 1; return; }
    const alt = m.channel.alternatives[0];
    out.finals.push({
      words: alt.words.map((w) => [w.word, w.start, w.speaker, w.language]),
      languages: alt.languages, entities: m.entities, diarize: m.metadata.diarize_info,
      search: m.channel.search,
    });
  });
  const closed = new Promise((resolve) => conn.on('close', (event) => resolve(event && event.code)));
  conn.connect();
  await conn.waitForOpen();
  for (let off = 0; off < audio.length; off += 5760) conn.sendMedia(audio.subarray(off, off + 5760));
  conn.sendCloseStream({ type: 'CloseStream' });
  out.code = await closed;
  return out;
}

(async () => {
  for (const s of streams) console.log(JSON.stringify(await stream(JSON.parse(s))));
  process.exit(0);
})().catch((err) => { console.error('app error:', err && err.stack); process.exit(1); });
'''


@pytest.fixture(scope="module")
def node_app(tmp_path_factory) -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: the Node client is not tested here")
    where = tmp_path_factory.mktemp("node")
    (where / "package.json").write_text('{"name": "features-test", "private": true}')
    r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", NODE_SDK],
                       cwd=where, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip(f"npm install {NODE_SDK} failed (is the npm registry reachable?): {r.stderr[-500:]}")
    (where / "guard.cjs").write_text(NODE_GUARD)
    (where / "app.cjs").write_text(NODE_APP)
    (where / "call.raw").write_bytes(call_audio(11.0))  # two sentences and the pause between them
    return where


def run_node(node_app: Path, url: str, *streams: dict) -> list[dict]:
    r = subprocess.run(["node", "--require", str(node_app / "guard.cjs"), str(node_app / "app.cjs"), url,
                        str(node_app / "call.raw"), *(orjson.dumps(s).decode() for s in streams)],
                       capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, cwd=node_app)
    assert r.returncode == 0, r.stderr[-3000:]
    return [orjson.loads(line) for line in r.stdout.strip().splitlines()]


def test_node_sdk_reads_speakers_entities_languages_and_search(node_app) -> None:
    handle = start_in_thread(EmulatorConfig(api_key="k", text_mark=False))
    try:
        url = handle.url.split("/v1/listen")[0]
        diarized, multi, plain = run_node(
            node_app, url,
            {"diarize": "true", "detect_entities": "true", "numerals": "true", "keyterm": "four one one",
             "search": "four"},
            {"language": "multi", "queryParams": {"language_hint": "ES"}},
            {})
    finally:
        handle.stop()
    for result in (diarized, multi, plain):
        assert result["code"] == 1000 and result["metadata"] == 1 and result["finals"], result
    # Diarization: a speaker on every word, the two sentences of call.wav[0:11 s] by different speakers.
    words = [w for f in diarized["finals"] for w in f["words"]]
    assert all(isinstance(w[2], int) for w in words)
    assert {w[2] for w in words if w[1] < 7.0} == {0} and {w[2] for w in words if w[1] > 8.0} == {1}
    assert all(f["diarize"]["arch"] == "v1" for f in diarized["finals"])
    # Entities on every final (an array), numerals: the keyterm "four one one" read as the digits 411.
    entities = [e for f in diarized["finals"] for e in f["entities"]]
    assert all(isinstance(f.get("entities"), list) for f in diarized["finals"])
    assert any(e["label"] == "CARDINAL" and e["value"].startswith("411") for e in entities), entities
    # search: the query reported on each final; no word "four" is left once numerals made it digits.
    assert all([s["query"] for s in f["search"]] == ["four"] for f in diarized["finals"])
    assert sum(len(f["search"][0]["hits"]) for f in diarized["finals"]) >= 1
    # language=multi: languages per alternative and per word.
    spoken = [f for f in multi["finals"] if f["words"]]
    assert spoken and all(f.get("languages") == ["en"] and all(w[3] == "en" for w in f["words"]) for f in spoken)
    # Nothing of it without the parameters.
    # (JSON.stringify leaves out undefined fields: absent here means absent from the message.)
    assert all(not {"entities", "languages", "search", "diarize"} & set(f)
               and all(w[2] is None and w[3] is None for w in f["words"]) for f in plain["finals"])
