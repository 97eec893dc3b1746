"""Memory under large uploads: 100 concurrent 8 MB uploads through a stagegate
binary to a model server that reads bodies slowly (64 KiB every 50 ms); prints how
many were answered 200 and the gateway's peak RSS (VmHWM).

    loadtest/scripts/uploads.py target/release/stagegate

A manual measuring aid, not a test (tests/bodies.rs asserts the budget)."""
import asyncio, os, socket, subprocess, sys, tempfile, time

UPLOADS, SIZE = 100, 8 * 1024 * 1024

async def slow_server(reader, writer):
    head = await reader.readuntil(b"\r\n\r\n")
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    got = 0
    while got < length:
        chunk = await reader.read(min(65536, length - got))
        if not chunk:
            break
        got += len(chunk)
        await asyncio.sleep(0.05)
    body = b'{"ok":true}'
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    writer.close()

async def upload(port, payload):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v2/models/m/infer HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % SIZE)
    writer.write(payload)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer.split(b"\r\n", 1)[0]

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def hwm(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return line.split()[1]

async def main(binary):
    server = await asyncio.start_server(slow_server, "127.0.0.1", 0)
    sport = server.sockets[0].getsockname()[1]
    gport, aport = free_port(), free_port()
    d = tempfile.mkdtemp()
    cfg = os.path.join(d, "c.toml")
    open(cfg, "w").write(f"""[server]
listen = "127.0.0.1:{gport}"
admin_listen = "127.0.0.1:{aport}"
state_dir = "{d}"
max_body_bytes = 16777216
request_timeout_ms = 600000
[[models]]
name = "m"
  [[models.versions]]
  version = "1"
  stage = "production"
  endpoints = ["http://127.0.0.1:{sport}"]
""")
    gw = subprocess.Popen([binary, "serve", "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", gport)).close(); break
        except OSError:
            time.sleep(0.05)
    payload = b"x" * SIZE
    started = time.time()
    answers = await asyncio.gather(*[upload(gport, payload) for _ in range(UPLOADS)])
    took = time.time() - started
    peak = hwm(gw.pid)
    gw.terminate(); gw.wait()
    ok = sum(a.startswith(b"HTTP/1.1 200") for a in answers)
    print(f"{binary}: {ok}/{UPLOADS} answered 200 in {took:.1f} s; gateway peak RSS {int(peak)//1024} MiB")

asyncio.run(main(sys.argv[1]))
