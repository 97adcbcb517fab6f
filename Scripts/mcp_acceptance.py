#!/usr/bin/env python3
"""Drives `kvmsandbox mcp` with the official MCP Python client (`pip install mcp`), over stdio
and over streamable HTTP, through everything issue 32 asks of it; prints one line per check and
`mcp: N checks passed (stdio, http)` at the end. Usage: mcp_acceptance.py KVMSANDBOX [--bench]"""
import asyncio, base64, os, shutil, signal, socket, statistics, subprocess, sys, time, zlib
from contextlib import asynccontextmanager

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

BINARY = sys.argv[1]
SERVER_ARGS = ["mcp", "--timeout", "4s", "--max-sessions", "8", "--memory", "512M"]
passed = 0
TOKEN = "test-token-" + os.urandom(12).hex()


def check(condition, what, detail=""):
    global passed
    if not condition:
        raise SystemExit(f"mcp: FAILED: {what}\n{detail}")
    passed += 1
    print(f"  ok  {what}")


def field(value, snake, camel):
    """The client library's field by its 2.x (snake_case) or 1.x (camelCase) name."""
    return getattr(value, snake) if hasattr(value, snake) else getattr(value, camel)


def structured(result):
    return field(result, "structured_content", "structuredContent") or {}


def failed(result):
    return field(result, "is_error", "isError")


def text(result):
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def png_decodes(data):
    """A real decode: chunks with valid CRCs, IHDR, and IDAT inflating to the image's size."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    position, idat, header = 8, b"", None
    while position < len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        body = data[position + 8:position + 8 + length]
        crc = int.from_bytes(data[position + 8 + length:position + 12 + length], "big")
        if zlib.crc32(kind + body) != crc:
            return False
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    depth, color = header[8], header[9]
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    raw = zlib.decompress(idat)
    return width > 0 and height > 0 and len(raw) == height * (1 + (width * channels * depth + 7) // 8)


async def scenario(session, transport):
    print(f"== {transport}")
    tools = {t.name: t for t in (await session.list_tools()).tools}
    check({"run_python", "run_command", "write_file", "read_file", "list_files", "reset_session", "close_session"} <= set(tools),
          f"{transport}: tools listed ({', '.join(sorted(tools))})")
    check(field(tools["run_python"], "input_schema", "inputSchema")["required"] == ["code"], f"{transport}: run_python's schema requires code")

    call = session.call_tool
    r = await call("run_python", {"code": "import json, re, sqlite3\nanswer = 6 * 7\nprint('defined')", "session": "one"})
    check(not failed(r) and "defined" in text(r), f"{transport}: a cell defines a variable and imports json, re, sqlite3", text(r))
    r = await call("run_python", {"code": "answer, re.sub('a', 'b', 'aa'), sqlite3.connect(':memory:').execute('select 1').fetchone()", "session": "one"})
    check(structured(r)["result"] == "(42, 'bb', (1,))", f"{transport}: the next cell reads it", text(r))

    r = await call("write_file", {"path": "notes/a.txt", "content": "hello from the agent\n", "session": "one"})
    check(not failed(r), f"{transport}: write_file", text(r))
    r = await call("read_file", {"path": "notes/a.txt", "session": "one"})
    check(structured(r)["text"] == "hello from the agent\n", f"{transport}: read_file gives it back", text(r))
    r = await call("run_python", {"code": "open('notes/a.txt').read().upper()", "session": "one"})
    check("HELLO FROM THE AGENT" in text(r), f"{transport}: the cell sees the file")
    r = await call("list_files", {"session": "one"})
    check("notes/a.txt" in text(r), f"{transport}: list_files", text(r))

    r = await call("run_python", {"code": "1/0", "session": "one"})
    error = structured(r)["error"]
    check(failed(r) and error["type"] == "ZeroDivisionError" and "<cell>" in error["traceback"],
          f"{transport}: 1/0 is a structured error with a traceback", str(structured(r)))

    r = await call("run_command", {"command": "printf 'b\\na\\n' | sort | tr a-z A-Z", "session": "one"})
    check(structured(r).get("exitStatus") == 0 and structured(r)["stdout"] == "A\nB\n", f"{transport}: run_command with a pipeline", text(r))

    await call("run_python", {"code": "state = 'kept'", "session": "loop"})
    started = time.monotonic()
    r = await call("run_python", {"code": "while True:\n    pass", "session": "loop"})
    check(failed(r) and structured(r)["error"]["type"] == "Timeout" and time.monotonic() - started < 30,
          f"{transport}: a looping cell is stopped at its timeout ({time.monotonic() - started:.1f} s: KeyboardInterrupt)", text(r))
    r = await call("run_python", {"code": "print('fresh')", "session": "fresh"})
    check("fresh" in text(r), f"{transport}: the next cell of a fresh session works")
    r = await call("run_python", {"code": "state", "session": "loop"})
    check(structured(r).get("result") == "'kept'", f"{transport}: and the interrupted session kept its state", text(r))
    r = await call("run_python", {"code": "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass", "session": "loop"})
    check(failed(r) and "restarted" in structured(r)["error"]["message"], f"{transport}: a cell that ignores the interrupt is ended, its session restarted", text(r))
    r = await call("run_python", {"code": "print('again')", "session": "loop"})
    check("again" in text(r), f"{transport}: which then works")

    r = await call("run_python", {"code": "'answer' in globals(), sorted(__import__('os').listdir('.'))", "session": "two"})
    check(structured(r)["result"] == "(False, ['outputs'])", f"{transport}: another session sees neither the variables nor the files", text(r))

    if os.path.isdir("/usr/lib/python3/dist-packages/matplotlib"):
        r = await call("run_python", {"code": "import matplotlib.pyplot as plt\nplt.plot([0, 1, 2], [0, 1, 4])\nplt.title('kvmsandbox')", "session": "plot"})
        images = [c for c in r.content if c.type == "image"]
        check(len(images) == 1 and field(images[0], "mime_type", "mimeType") == "image/png" and png_decodes(base64.b64decode(images[0].data)),
              f"{transport}: a matplotlib plot comes back as a PNG that decodes ({len(base64.b64decode(images[0].data)) if images else 0} bytes)", text(r))
        if transport == "stdio":
            with open(os.environ.get("MCP_PLOT", "/tmp/kvmsandbox-mcp-plot.png"), "wb") as handle:
                handle.write(base64.b64decode(images[0].data))
    else:
        raise SystemExit("mcp: FAILED: python3-matplotlib is not installed (apt-get install python3-matplotlib)")

    # Hostile cells: each contained, the server fine, the next session fine.
    r = await call("run_python", {"code": "open('/etc/shadow').read()", "session": "evil"})
    check(failed(r) and structured(r)["error"]["type"] in ("FileNotFoundError", "PermissionError"), f"{transport}: /etc/shadow is not there", text(r))
    r = await call("read_file", {"path": "../../etc/hostname", "session": "evil"})
    check(failed(r) and "outside the workspace" in text(r), f"{transport}: a path escape from the workspace is refused", text(r))
    r = await call("run_command", {"command": "bomb() { bomb | bomb & }; bomb; sleep 1; echo survived", "session": "evil"})
    check("survived" in structured(r).get("stdout", "") and "Cannot fork" in structured(r).get("stderr", ""),
          f"{transport}: a fork bomb stops at the session's process limit (the shell: Cannot fork) and the shell goes on", text(r)[:2000])
    r = await call("run_python", {"code": "import sys\nfor _ in range(1024): sys.stdout.write('x' * (1 << 20))", "session": "evil"})
    check(len(text(r)) < 200_000, f"{transport}: 1 GiB of output comes back bounded ({len(text(r))} characters, {structured(r).get('error', {}).get('type', 'no error')})")
    r = await call("run_python", {"code": "hog = bytearray(2 << 30)", "session": "evil"})
    check(failed(r) and structured(r)["error"]["type"] == "MemoryError", f"{transport}: a memory hog gets MemoryError", text(r))
    r = await call("run_python", {"code": "print('still here')", "session": "after"})
    check("still here" in text(r), f"{transport}: the next session is fine")

    for name in ["one", "two", "loop", "fresh", "plot", "evil", "after"]:
        await call("close_session", {"session": name})
    r = await call("run_python", {"code": "'answer' in globals()", "session": "one"})
    check(structured(r)["result"] == "False", f"{transport}: close_session forgets the session")
    await call("close_session", {"session": "one"})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def over_stdio(body):
    async with stdio_client(StdioServerParameters(command=BINARY, args=SERVER_ARGS)) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            return await body(session)


@asynccontextmanager
async def http_server():
    port, metrics = free_port(), free_port()
    token_file = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"kvmsandbox-mcp-token-{os.getpid()}")
    with open(token_file, "w") as handle:
        handle.write(TOKEN + "\n")
    server = subprocess.Popen([BINARY] + SERVER_ARGS + ["--listen", f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{metrics}",
                               "--token-file", token_file], stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:
            if "/mcp" in line:
                break
        else:
            raise SystemExit("mcp: FAILED: the HTTP server did not start")
        yield f"http://127.0.0.1:{port}/mcp"
        import urllib.request, urllib.error

        def post(path, body, content_type="application/json", token=TOKEN):
            headers = {"Content-Type": content_type, "Accept": "application/json, text/event-stream"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as error:
                return error.code, error.read()
        for wrong in (None, "x" * 32, TOKEN[:-1]):
            status, _ = post("/mcp", b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', token=wrong)
            check(status == 401, f"http: a request {'without a token' if wrong is None else 'with a wrong token'} gets 401 (got {status})")
        status, _ = post("/mcp", b"{not json")
        check(status == 400, f"http: malformed JSON gets 400 (got {status})")
        status, _ = post("/elsewhere", b"{}")
        check(status == 404, f"http: another path gets 404 (got {status})")
        try:
            status, _ = post("/mcp", b"[" + b"1," * (9 << 20) + b"1]")
        except OSError:
            status = 413  # the server may close the connection while the body is still coming
        check(status == 413, f"http: an 18 MiB body is refused (got {status})")
        exposition = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
        counted = [line for line in exposition.splitlines() if line.startswith("kvmsandbox_mcp_requests_total")]
        check(any('outcome="timeout"' in line for line in counted) and any('op="run"' in line and 'outcome="ok"' in line for line in counted),
              f"http: Prometheus metrics count the tool calls ({len(counted)} series)", exposition[:3000])
    finally:
        os.unlink(token_file)
        server.send_signal(signal.SIGTERM)
        try:
            check(server.wait(timeout=20) == 0, "http: the server stops cleanly on SIGTERM")
        except subprocess.TimeoutExpired:
            server.kill()
            raise SystemExit("mcp: FAILED: the HTTP server did not stop on SIGTERM")


async def over_http(body):
    try:
        import httpx2 as httpx  # the MCP client 2.x depends on httpx2
    except ImportError:
        import httpx
    async with http_server() as url:
        client = httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=httpx.Timeout(60, read=300))
        async with streamable_http_client(url, http_client=client) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await body(session)


async def bench(session):
    """New session + first cell, and a cell in a warm session, in milliseconds (client side; the
    server's own time and exits per cell are in each reply: printed as medians)."""
    new, warm, vm_new, vm_warm, exits = [], [], [], [], []
    await asyncio.sleep(1)  # the spare sessions warm up
    for i in range(20):
        started = time.perf_counter()
        r = await session.call_tool("run_python", {"code": "print(1)", "session": f"b{i}"})
        new.append((time.perf_counter() - started) * 1000)
        vm_new.append(structured(r)["microseconds"] / 1000)
        started = time.perf_counter()
        r = await session.call_tool("run_python", {"code": "print(1)", "session": f"b{i}"})
        warm.append((time.perf_counter() - started) * 1000)
        vm_warm.append(structured(r)["microseconds"] / 1000)
        exits.append(structured(r)["exits"])
        await session.call_tool("close_session", {"session": f"b{i}"})
        await asyncio.sleep(0.1)  # the spare is replaced
    print(f"bench: in the VM (server side): first cell of a new session {statistics.median(vm_new):.2f} ms, "
          f"warm cell {statistics.median(vm_warm):.2f} ms, {statistics.median(exits):.0f} exits per warm cell")
    return statistics.median(new), statistics.median(warm)


def native_python():
    runs = []
    for _ in range(20):
        started = time.perf_counter()
        subprocess.run(["/usr/bin/python3", "-c", "print(1)"], capture_output=True, check=True)
        runs.append((time.perf_counter() - started) * 1000)
    return statistics.median(runs)


def jupyter_kernel():
    """A Jupyter kernel's start + first print(1), and its warm execute round trip, in ms (None
    when jupyter_client and ipykernel are not installed: `pip install jupyter_client ipykernel`)."""
    try:
        from jupyter_client.manager import start_new_kernel
    except ImportError:
        return None
    new, warm = [], []
    for _ in range(5):
        started = time.perf_counter()
        manager, client = start_new_kernel(kernel_name="python3")
        try:
            client.execute_interactive("print(1)", timeout=60, output_hook=lambda message: None)
            new.append((time.perf_counter() - started) * 1000)
            for _ in range(10):
                started = time.perf_counter()
                client.execute_interactive("print(1)", timeout=60, output_hook=lambda message: None)
                warm.append((time.perf_counter() - started) * 1000)
        finally:
            client.stop_channels()
            manager.shutdown_kernel(now=True)
    return statistics.median(new), statistics.median(warm)


async def main():
    await over_stdio(lambda s: scenario(s, "stdio"))
    await over_http(lambda s: scenario(s, "http"))
    if "--bench" in sys.argv:
        new, warm = await over_stdio(bench)
        http_new, http_warm = await over_http(bench)
        native = native_python()
        print(f"bench: new session + print(1): stdio {new:.2f} ms, http {http_new:.2f} ms; warm cell: stdio {warm:.2f} ms, "
              f"http {http_warm:.2f} ms; native python3 -c 'print(1)': {native:.2f} ms (medians of 20, client side)")
        jupyter = jupyter_kernel()
        print("bench: jupyter kernel: " + ("not installed (pip install jupyter_client ipykernel)" if jupyter is None else
              f"start + print(1) {jupyter[0]:.1f} ms, warm execute {jupyter[1]:.2f} ms (medians)"))
    print(f"mcp: {passed} checks passed (stdio, http)")


asyncio.run(main())
