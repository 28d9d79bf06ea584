"""A browser stand-in for the live view checks: run with ComfyUI's interpreter (it has aiohttp).

    python live_view_client.py URL PROMPT_JSON OUT_DIR

Opens two websockets (/ws?clientId=...): the client that queues the prompt and a bystander.
Queues PROMPT_JSON with the first client's id, collects every message until the prompt ends, and
fetches each sprite sheet named by a "dummy_forcing.live" event through /view, as web/live_view.js
does. Prints one JSON line: {"events": [...], "bystander": [...], "sprites": {filename: path},
"end": last message type}.
"""
import asyncio
import json
import os
import sys
import uuid

import aiohttp

EVENT = "dummy_forcing.live"


async def main(url, prompt, out_dir):
    cid, other = uuid.uuid4().hex, uuid.uuid4().hex
    events, bystander, end = [], [], None
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{url}/ws?clientId={cid}")
        ws2 = await s.ws_connect(f"{url}/ws?clientId={other}")
        async with s.post(f"{url}/prompt", json={"prompt": prompt, "client_id": cid}) as r:
            body = await r.json()
            if r.status != 200:
                raise SystemExit(f"prompt rejected: {body}")
            pid = body["prompt_id"]

        async def listen(sock, into):
            async for msg in sock:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                if m.get("type") == EVENT:
                    into.append(m["data"])
                if into is events and m.get("data", {}).get("prompt_id") == pid and m["type"] in (
                        "execution_success", "execution_error", "execution_interrupted"):
                    return m["type"]

        end = await asyncio.wait_for(listen(ws, events), timeout=120)
        try:  # anything meant for the other client has been published by now
            await asyncio.wait_for(listen(ws2, bystander), timeout=1.0)
        except asyncio.TimeoutError:
            pass
        sprites = {}
        for e in events:
            if e.get("state") != "frames":
                continue
            q = {"filename": e["filename"], "subfolder": e["subfolder"], "type": e["type"]}
            async with s.get(f"{url}/api/view", params=q) as r:
                if r.status != 200:
                    raise SystemExit(f"/view answered {r.status} for {q}")
                path = os.path.join(out_dir, e["filename"])
                with open(path, "wb") as f:
                    f.write(await r.read())
                sprites[e["filename"]] = path
        await ws.close()
        await ws2.close()
    print(json.dumps({"events": events, "bystander": bystander, "sprites": sprites, "end": end}))


if __name__ == "__main__":
    with open(sys.argv[2]) as f:
        asyncio.run(main(sys.argv[1], json.load(f), sys.argv[3]))
