/// The Python program every agent session runs: it reads one request frame at a time from
/// standard input (`LENGTH\n` then that many bytes of JSON), does it in one namespace that lives
/// as long as the session, and answers on standard output after a marker line with one JSON
/// object. It is booted once, imports what `--preload` names, and is snapshotted at its first
/// read of stdin; every session is a fork of that snapshot.
///
/// Nothing here is trusted by the host: a cell can rewrite the driver, forge a marker or read
/// the frames itself, and then it only lies to its own session (the host bounds and parses
/// what comes back, and restarts a session whose answer it cannot read).
enum PythonDriver {
    /// What precedes the answer's JSON on stdout (ASCII record separators around a name).
    static let marker: [UInt8] = Array("\u{1E}KVMSANDBOX-RESULT\u{1E}".utf8)

    /// The interpreter's arguments: `python3 -u -c SOURCE PRELOAD` (PRELOAD: module names, comma-separated).
    /// A name after `?` is optional: skipped quietly when the module is not installed.
    static func arguments(preload: [String]) -> [String] {
        ["python3", "-u", "-c", source, preload.joined(separator: ",")]
    }

    /// The driver itself.
    static let source = #"""
import sys, os, io, json, ast, traceback, base64, builtins, time

WORKSPACE = os.environ.get("KVMSANDBOX_WORKSPACE", "/workspace")
LIMIT = int(os.environ.get("KVMSANDBOX_OUTPUT_LIMIT", "65536"))
FILE_LIMIT = int(os.environ.get("KVMSANDBOX_FILE_LIMIT", str(8 << 20)))
MARKER = b"\x1eKVMSANDBOX-RESULT\x1e"
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".svg": "image/svg+xml", ".webp": "image/webp"}

os.makedirs(WORKSPACE + "/outputs", exist_ok=True)
os.chdir(WORKSPACE)
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MPLCONFIGDIR", "/tmp/matplotlib")
# Preloaded modules; a name after "?" is optional (no complaint when it is not installed).
for name in filter(None, (sys.argv[1] if len(sys.argv) > 1 else "").split(",")):
    try:
        __import__(name.lstrip("?"))
    except Exception as error:
        if not name.startswith("?"):
            print("preload %s: %s" % (name, error), file=sys.stderr)
if "matplotlib" in sys.modules:
    import matplotlib.pyplot

# The host's soft timeout is a SIGINT: KeyboardInterrupt inside a cell (the session keeps its
# state), nothing between cells.
import signal
in_cell = False

def on_interrupt(number, frame):
    if in_cell:
        raise KeyboardInterrupt

signal.signal(signal.SIGINT, on_interrupt)

# The frames come on a descriptor of the driver's own; a cell's stdin is empty.
REQUESTS = os.dup(0)
ANSWERS = os.fdopen(os.dup(1), "wb", buffering=0)
null = os.open("/dev/null", os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
sys.stdin = io.TextIOWrapper(io.BytesIO(b""))

class Capped(io.TextIOBase):
    """Keeps the first LIMIT characters written and counts the rest."""
    def __init__(self):
        self.parts, self.size, self.dropped = [], 0, 0
    def writable(self):
        return True
    def write(self, text):
        text = str(text)
        room = LIMIT - self.size
        if room > 0:
            self.parts.append(text[:room])
            self.size += min(len(text), room)
        self.dropped += max(0, len(text) - max(room, 0))
        return len(text)
    def text(self):
        body = "".join(self.parts)
        if self.dropped:
            body += "\n[... %d more characters truncated by kvmsandbox]" % self.dropped
        return body

def capped(text):
    if len(text) <= LIMIT:
        return text
    return text[:LIMIT] + "\n[... %d more characters truncated by kvmsandbox]" % (len(text) - LIMIT)

namespace = {"__name__": "__main__", "__builtins__": builtins}
pending = b""

def read_exactly(count):
    global pending
    while len(pending) < count:
        chunk = os.read(REQUESTS, 1 << 16)
        if not chunk:
            sys.exit(0)
        pending += chunk
    data, pending = pending[:count], pending[count:]
    return data

def next_request():
    header = b""
    while not header.endswith(b"\n"):
        header += read_exactly(1)
        if len(header) > 20:
            sys.exit(3)
    return json.loads(read_exactly(int(header)))

def answer(reply):
    ANSWERS.write(MARKER + json.dumps(reply).encode() + b"\n")

def inside(path):
    """The absolute path of `path` in the workspace, or ValueError when it leaves it."""
    full = os.path.realpath(os.path.join(WORKSPACE, path))
    if full != WORKSPACE and not full.startswith(WORKSPACE + "/"):
        raise ValueError("%s is outside the workspace %s" % (path, WORKSPACE))
    return full

outputs_seen = (None, {})

def outputs_state():
    """(mtime, size) of every file under outputs/; one stat while the folder stays empty (each
    system call is a VM exit)."""
    global outputs_seen
    try:
        changed = os.stat(WORKSPACE + "/outputs").st_mtime_ns
    except OSError:
        return {}
    if outputs_seen[0] == changed and not outputs_seen[1]:
        return {}
    state = {}
    for root, _, names in os.walk(WORKSPACE + "/outputs"):
        for name in names:
            full = os.path.join(root, name)
            try:
                info = os.stat(full)
                state[full] = (info.st_mtime_ns, info.st_size)
            except OSError:
                pass
    outputs_seen = (changed, state)
    return state

def collect_images(before):
    images = []
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        for number in plt.get_fignums():
            buffer = io.BytesIO()
            try:
                plt.figure(number).savefig(buffer, format="png")
                images.append({"name": "figure-%d.png" % number, "mimeType": "image/png",
                               "data": base64.b64encode(buffer.getvalue()).decode()})
            except Exception as error:
                print("figure %d: %s" % (number, error), file=sys.stderr)
        plt.close("all")
    for full, state in sorted(outputs_state().items()):
        kind = IMAGE_TYPES.get(os.path.splitext(full)[1].lower())
        if kind and before.get(full) != state and state[1] <= FILE_LIMIT:
            with open(full, "rb") as handle:
                images.append({"name": os.path.relpath(full, WORKSPACE), "mimeType": kind,
                               "data": base64.b64encode(handle.read()).decode()})
    return images

def run_cell(code):
    global in_cell
    stdout, stderr = Capped(), Capped()
    reply = {"result": None, "error": None}
    before = outputs_state()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = stdout, stderr
    in_cell = True
    try:
        tree = ast.parse(code, "<cell>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<cell>", "exec"), namespace)
        if last is not None:
            value = eval(compile(last, "<cell>", "eval"), namespace)
            if value is not None:
                namespace["_"] = value
                reply["result"] = capped(repr(value))
    except BaseException as error:
        if isinstance(error, SystemExit) and error.code in (None, 0):
            pass
        else:
            frames = traceback.format_exception(type(error), error, error.__traceback__)
            # Drop the driver's own frame: the traceback starts in the cell.
            if len(frames) > 1 and "<cell>" not in frames[1] and frames[0].startswith("Traceback"):
                frames = frames[:1] + frames[2:]
            reply["error"] = {"type": type(error).__name__, "message": capped(str(error)),
                              "traceback": capped("".join(frames))}
    finally:
        in_cell = False
        sys.stdout, sys.stderr = saved
    try:
        reply["images"] = collect_images(before)
    except Exception as error:
        reply["images"] = []
        stderr.write("collecting images: %s\n" % error)
    reply["stdout"], reply["stderr"] = stdout.text(), stderr.text()
    return reply

def run_command(request):
    global in_cell
    import subprocess
    command = request.get("argv") or request.get("command")
    in_cell = True
    try:
        done = subprocess.run(command, shell=isinstance(command, str), input=(request.get("stdin") or "").encode(),
                              capture_output=True, cwd=WORKSPACE)
        return {"exitStatus": done.returncode, "stdout": capped(done.stdout.decode(errors="replace")),
                "stderr": capped(done.stderr.decode(errors="replace"))}
    except BaseException as error:
        return {"error": {"type": type(error).__name__, "message": str(error), "traceback": ""}}
    finally:
        in_cell = False

def write_file(request):
    full = inside(request["path"])
    os.makedirs(os.path.dirname(full), exist_ok=True)
    data = base64.b64decode(request["base64"]) if "base64" in request else request.get("content", "").encode()
    with open(full, "wb") as handle:
        handle.write(data)
    return {"path": os.path.relpath(full, WORKSPACE), "bytes": len(data)}

def read_file(request):
    full = inside(request["path"])
    size = os.path.getsize(full)
    if size > FILE_LIMIT:
        raise ValueError("%s is %d bytes, more than the %d a read returns" % (request["path"], size, FILE_LIMIT))
    with open(full, "rb") as handle:
        data = handle.read()
    reply = {"path": os.path.relpath(full, WORKSPACE), "bytes": len(data)}
    kind = IMAGE_TYPES.get(os.path.splitext(full)[1].lower())
    try:
        if kind and kind != "image/svg+xml":
            raise UnicodeDecodeError("utf-8", b"", 0, 1, "image")
        reply["text"] = data.decode("utf-8")
    except UnicodeDecodeError:
        reply["base64"] = base64.b64encode(data).decode()
        reply["mimeType"] = kind or "application/octet-stream"
    return reply

def list_files(request):
    top = inside(request.get("path") or ".")
    entries = []
    for root, directories, names in os.walk(top):
        directories.sort()
        for name in sorted(names) + [d + "/" for d in directories]:
            full = os.path.join(root, name.rstrip("/"))
            try:
                size = 0 if name.endswith("/") else os.path.getsize(full)
            except OSError:
                size = 0
            entries.append({"path": os.path.relpath(full, WORKSPACE) + ("/" if name.endswith("/") else ""), "bytes": size})
            if len(entries) >= 1000:
                return {"entries": entries, "truncated": True}
    return {"entries": entries, "truncated": False}

OPERATIONS = {"command": run_command, "write": write_file, "read": read_file, "list": list_files}

while True:
    request = next_request()
    started = time.monotonic()
    try:
        if request.get("op") == "run":
            reply = run_cell(request.get("code", ""))
        else:
            reply = OPERATIONS[request.get("op")](request)
    except Exception as error:
        reply = {"error": {"type": type(error).__name__, "message": str(error), "traceback": ""}}
    reply["seconds"] = time.monotonic() - started
    answer(reply)
"""#
}
