"""
The submission's own process: the graders never run a submission's code themselves.

A grader's test asks for values with `sub.run(compute, *args)`, where `compute` is a
function of the grader marked @in_submission. A child process, which imported the
grader and the submission, runs compute(submission, *args) and sends back what it
returns; the test then checks those values here, in the pytest process, against
computations of its own. The points are therefore decided by a process in which the
submission's code never runs: an atexit hook, os._exit, patching pytest or the
grader, printing a fake summary line or writing a report file all happen in the
child and change nothing here. The submission can only change the values it sends.

What comes back is data, never code: JSON with numbers, strings, lists, dicts and
tensors or arrays as raw bytes of a known dtype (no pickle, which could run code in
the grader when it is read). The child is forked from a server that has torch
loaded (multiprocessing's forkserver), so a fresh one costs a fraction of a second;
it gets a fresh process group, its prints go to a log file, and an endless loop or a
crash ends that child only (the next test starts a new one).

Limits: the child runs as the same user, so it can write files and signal other
processes of that user. grade.py notices changed grading files; for submissions you
do not trust at all, run grade.py in a container or as a user of its own.
"""

import base64
import functools
import importlib.util
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MAX_MESSAGE = 1 << 28          # 256 MiB: more than any grader asks for


def in_submission(fn):
    """Marks a grader function that runs in the submission's process: it receives the
    submission module and returns values (numbers, strings, tensors, arrays, and lists,
    tuples and dicts of them)."""
    fn.in_submission = True
    return fn

# ---------------------------------------------------------------- the wire format

# torch and numpy are imported where they are used: the grader's process starts the
# server (which loads torch) first, and loads its own torch meanwhile.
DTYPES = ("float64", "float32", "float16", "bfloat16", "complex128", "complex64",
          "int64", "int32", "int16", "int8", "uint8", "bool")


@functools.cache
def torch_dtypes():
    import torch
    return {n: getattr(torch, n) for n in DTYPES}


def encode(obj):
    """obj -> something json.dumps writes. Tuples stay tuples, dict keys keep their type."""
    import numpy as np
    import torch
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        if str(t.dtype).split(".")[1] not in DTYPES:
            raise TypeError(f"cannot send a tensor of dtype {t.dtype} to the grader")
        raw = bytes(t.reshape(-1).view(torch.uint8).numpy())
        return {"tensor": [str(t.dtype).split(".")[1], list(t.shape), base64.b64encode(raw).decode()]}
    if isinstance(obj, np.ndarray):
        if obj.dtype.name not in DTYPES or obj.dtype.name == "bfloat16":
            raise TypeError(f"cannot send an array of dtype {obj.dtype} to the grader")
        a = np.ascontiguousarray(obj)
        return {"array": [a.dtype.name, list(a.shape), base64.b64encode(a.tobytes()).decode()]}
    if isinstance(obj, np.generic):
        return encode(obj.item())
    if isinstance(obj, bytes):
        return {"bytes": base64.b64encode(obj).decode()}
    if isinstance(obj, tuple):
        return {"tuple": [encode(v) for v in obj]}
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if isinstance(obj, dict):
        return {"dict": [[encode(k), encode(v)] for k, v in obj.items()]}
    raise TypeError(f"cannot send a {type(obj).__name__} to the grader (numbers, strings, tensors, "
                    "arrays, and lists, tuples and dicts of them)")


def _decode_object(d):
    import numpy as np
    import torch
    (kind, value), = d.items()
    if kind == "tensor":
        dtype, shape, data = value
        raw = bytearray(base64.b64decode(data))
        if not raw:
            return torch.empty(shape, dtype=torch_dtypes()[dtype])
        return torch.frombuffer(raw, dtype=torch.uint8).view(torch_dtypes()[dtype]).reshape(shape).clone()
    if kind == "array":
        dtype, shape, data = value
        if dtype not in DTYPES or dtype == "bfloat16":
            raise ValueError(f"unknown dtype {dtype!r}")
        return np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype)).reshape(shape).copy()
    if kind == "bytes":
        return base64.b64decode(value)
    if kind == "tuple":
        return tuple(value)
    if kind == "dict":
        return {tuple(k) if isinstance(k, list) else k: v for k, v in value}
    raise ValueError(f"unknown kind {kind!r}")


def pack(obj):
    return json.dumps(encode(obj)).encode()


def unpack(data):
    """The inverse of pack: plain json, then the tagged objects (a wrong tag is an error)."""
    return json.loads(data, object_hook=_decode_object)

# ---------------------------------------------------------------- the child

def _import(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module          # as a normal import would (dataclasses, pickling need it)
    spec.loader.exec_module(module)
    return module


def describe(e, files=()):
    """An exception of the submission as a short text: its type and message, and the
    lines of the submission (and of the grader) it went through, innermost last."""
    if isinstance(e, SyntaxError) and e.filename in files:
        return f"SyntaxError: {e.msg}\n  {Path(e.filename).name}, line {e.lineno}: {(e.text or '').strip()}"
    lines = [f"{type(e).__name__}: {e}".strip().removesuffix(":")[:2000]]
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename in files]
    for f in frames[-3:]:
        lines.append(f"  {Path(f.filename).name}, line {f.lineno}, in {f.name}: {(f.line or '').strip()}")
    return "\n".join(lines)


def serve(conn, grader_path, submission_path, log_path):
    """The child: import the grader and the submission, then answer requests
    (name of an @in_submission function, arguments) until the pipe closes."""
    if hasattr(os, "setsid"):
        os.setsid()                                    # a process group of its own: stopped as a whole
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    sys.stdout.reconfigure(line_buffering=True)        # its prints reach the log before a crash
    os.chdir(tempfile.mkdtemp(prefix="submission-"))   # files it writes by a relative path land here
    import torch
    torch.set_num_threads(1)
    files = (str(grader_path), str(submission_path))
    grader = _import(grader_path, "grader")
    try:
        sub = _import(submission_path, "submission")
    except BaseException as e:                          # SyntaxError, ImportError, SystemExit, ...
        conn.send_bytes(pack(("failed", describe(e, files=files))))
        os._exit(0)
    conn.send_bytes(pack(("ready", sorted(n for n, v in vars(sub).items() if callable(v) and not n.startswith("_")))))
    while True:
        try:
            name, args = unpack(conn.recv_bytes())
        except EOFError:
            os._exit(0)
        try:
            reply = pack(("ok", getattr(grader, name)(sub, *args)))
        except AttributeError as e:
            missing = getattr(e, "obj", None) is sub
            reply = pack(("missing", e.name) if missing else ("raised", describe(e, files)))
        except BaseException as e:                      # whatever it raised, SystemExit included
            reply = pack(("raised", describe(e, files)))
        conn.send_bytes(reply)

# ---------------------------------------------------------------- the grader's side

class Problem(Exception):
    """The submission's process raised, timed out, crashed or could not import: the
    message says which, for the feedback."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


_context = None


def context():
    """multiprocessing's forkserver, with torch and the project preloaded (spawn where
    there is no fork, on Windows: slower, the same otherwise)."""
    global _context
    if _context is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _context = multiprocessing.get_context("forkserver")
            _context.set_forkserver_preload(["torch._dynamo", "numpy", "scipy.integrate", "matplotlib",
                                             "pytest", "soflow", "toy2d", "toynet", "checks", "runner"])
            # the server imports those with the environment it starts with (Python 3.11 ignores sys.path)
            before = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)] + ([before] if before else []))
            try:
                from multiprocessing import forkserver
                forkserver.ensure_running()
            finally:
                if before is None:
                    del os.environ["PYTHONPATH"]
                else:
                    os.environ["PYTHONPATH"] = before
        else:
            _context = multiprocessing.get_context("spawn")
    return _context


class Submission:
    """The submission, seen from the grader: a child process started when first needed,
    and again after a crash or a timeout (not after a failed import)."""

    def __init__(self, grader_path, path, timeout):
        self.grader_path, self.path, self.timeout = Path(grader_path), Path(path), timeout
        self.proc = self.conn = None
        self.names = None                     # the submission's public callables, once imported
        self.import_error = None
        self.problems = []                    # (kind, what it was doing, message): timeouts and crashes
        self.log = tempfile.NamedTemporaryFile(prefix="submission-output-", suffix=".txt", delete=False)

    def _start(self):
        if self.import_error:
            raise Problem("import", self.import_error)
        if not self.path.is_file():
            self.import_error = f"the submission {self.path} does not exist"
            raise Problem("import", self.import_error)
        ctx = context()
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child, str(self.grader_path), str(self.path), self.log.name),
                                name="submission")
        self.proc.start()
        child.close()
        try:
            kind, value = self._receive("importing the submission")
        except Problem as p:
            self.import_error = str(p)
            raise Problem("import", self.import_error) from None
        if kind == "failed":
            self.stop()
            self.import_error = f"could not import the submission: {value}"
            raise Problem("import", self.import_error)
        self.names = set(value)

    def run(self, fn, *args, timeout=None):
        """fn(submission, *args) in the submission's process; returns its value or raises Problem."""
        if not getattr(fn, "in_submission", False):
            raise TypeError(f"{fn.__name__} is not marked @in_submission")
        if self.proc is None:
            self._start()
        doing = f"{fn.__name__}{args if args else ''}"
        try:
            self.conn.send_bytes(pack((fn.__name__, list(args))))
        except OSError:                                 # it ended since the last test
            raise self._crashed(doing, "a closed pipe") from None
        kind, value = self._receive(doing, timeout)
        if kind == "missing":
            raise Problem("missing", f"the submission has no function `{value}`")
        if kind == "raised":
            raise Problem("raised", f"your code raised {value}")
        return value

    def _receive(self, doing, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        if not self.conn.poll(timeout):
            self.stop()
            message = (f"timed out: {doing} did not finish within {timeout:g} s (an endless loop?); "
                       "the submission's process was stopped")
            self.problems.append(("timeout", doing, message))
            raise Problem("timeout", message)
        try:
            return unpack(self.conn.recv_bytes(MAX_MESSAGE))
        except (EOFError, OSError, ValueError, KeyError, TypeError, RuntimeError) as e:   # whatever a reply can break
            raise self._crashed(doing, f"an unreadable reply ({type(e).__name__})") from None

    def _crashed(self, doing, otherwise):
        code = self.stop()
        why = f"exit code {code}" if code is not None else otherwise
        message = (f"crashed: the submission's process ended ({why}) while {doing}. "
                   f"Its last output:\n{self.output(8) or '  (none)'}")
        self.problems.append(("crash", doing, message))
        return Problem("crash", message)

    def stop(self):
        """End the child and its process group; returns its exit code if it had ended by itself."""
        if self.proc is None:
            return None
        self.proc.join(0.2)
        code = self.proc.exitcode
        try:
            os.killpg(self.proc.pid, signal.SIGKILL) if hasattr(os, "killpg") else self.proc.kill()
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.join(5)
        self.conn.close()
        self.proc = self.conn = None
        return code

    def output(self, lines=30):
        """The last lines the submission printed (its stdout and stderr), indented."""
        with open(self.log.name, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 30_000))   # a tail: it may have printed gigabytes
            text = f.read().decode(errors="replace").rstrip()
        return "\n".join("  " + l[:300] for l in text.splitlines()[-lines:]) if text else ""

    def close(self):
        self.stop()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)

