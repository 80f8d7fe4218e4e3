"""The REPL that runs inside the sandbox: a persistent namespace, the agent's tools, and a
line-delimited JSON protocol with the worker. Standard library only; it is started as
`python -I -c <this file's text>`, so nothing of the project needs to be visible in the sandbox.

Protocol (one JSON object per line, on descriptors saved at start so that the agent's code and
its subprocesses cannot write into it by accident; fd 0 becomes /dev/null, fds 1 and 2 capture
stdout and stderr, each to a file of its own, so errors stay apart from output):
    repl -> worker  {"op": "ready"}                               (once, before any code runs)
    worker -> repl  {"op": "exec", "code": str}
    repl -> worker  {"op": "llm_query", "prompt": str}          (while code runs)
    worker -> repl  {"op": "llm_result", "text": str}
    repl -> worker  {"op": "llm_query_batched", "prompts": [str]}  (answered concurrently)
    worker -> repl  {"op": "llm_results", "texts": [str]}         (in the prompts' order)
    repl -> worker  {"op": "done", "stdout": str, "stderr": str, "final_answer": str | null,
                     "seconds": float}
"""

import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

MAX_CAPTURE = 1_000_000  # characters kept of one stream of a block; the worker truncates further
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", "node_modules"}
ROOT = os.getcwd()
REPL_PID = os.getpid()  # a process forked by the agent's code must never speak for the REPL

_proto_in = os.fdopen(os.dup(0), "r", buffering=1)
_proto_out = os.fdopen(os.dup(1), "w", buffering=1)
_devnull = os.open(os.devnull, os.O_RDONLY)
os.dup2(_devnull, 0)
# Unbuffered: prints, tracebacks and subprocess output reach each stream's capture in the order
# they happen.
sys.stdout.reconfigure(line_buffering=True, write_through=True)
sys.stderr.reconfigure(line_buffering=True, write_through=True)
_final = {"answer": None}
_allow_finish = os.environ.get("RLM_REPL_FINISH", "1") == "1"


def _send(message):
    if os.getpid() != REPL_PID:
        os._exit(0)
    _proto_out.write(json.dumps(message) + "\n")
    _proto_out.flush()


def _inside(path):
    """A path resolved inside the working copy, or ValueError."""
    full = os.path.realpath(os.path.join(ROOT, path))
    if full != ROOT and not full.startswith(ROOT + os.sep):
        raise ValueError(f"{path!r} is outside the repository")
    return full


def list_files(path=".", pattern="*", limit=500):
    """Files under `path` (relative paths) whose name matches `pattern`."""
    found = []
    for directory, dirs, files in os.walk(_inside(path)):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            if fnmatch.fnmatch(name, pattern):
                found.append(os.path.relpath(os.path.join(directory, name), ROOT))
                if len(found) >= limit:
                    return found
    return found


def read_file(path, start=1, end=None):
    """Lines `start`..`end` (1-based, inclusive) of a file, each prefixed with its number."""
    with open(_inside(path), errors="replace") as handle:
        lines = handle.read().splitlines()
    end = len(lines) if end is None else min(end, len(lines))
    return "\n".join(f"{n:5d}  {lines[n - 1]}" for n in range(max(start, 1), end + 1))


def search(pattern, path=".", max_results=100):
    """Lines matching the regular expression `pattern`, as 'path:line: text'."""
    regex, hits = re.compile(pattern), []
    for relative in list_files(path, limit=100_000):
        try:
            with open(os.path.join(ROOT, relative), errors="strict") as handle:
                for number, line in enumerate(handle, 1):
                    if regex.search(line):
                        hits.append(f"{relative}:{number}: {line.rstrip()[:200]}")
                        if len(hits) >= max_results:
                            return hits
        except (UnicodeDecodeError, OSError):
            continue
    return hits


def run(command, timeout=90):
    """Run a shell command in the repository; returns its output (stdout and stderr)."""
    process = subprocess.Popen(
        command,
        shell=True,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
        errors="replace",
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        output, _ = process.communicate()
        output += f"\n[killed: the command ran longer than {timeout}s]"
    return output


def apply_patch(diff):
    """Apply a unified diff (paths relative to the repository, a/ b/ prefixes)."""
    with tempfile.NamedTemporaryFile("w", suffix=".diff", delete=False) as handle:
        handle.write(diff if diff.endswith("\n") else diff + "\n")
    try:
        return run(f"patch -p1 --batch --forward < {handle.name}", timeout=30)
    finally:
        os.unlink(handle.name)


def finish(answer=""):
    """End the task: the current state of the repository is graded."""
    _final["answer"] = str(answer)


def llm_query(prompt):
    """Ask the model a sub-question; returns its answer as text."""
    _send({"op": "llm_query", "prompt": str(prompt)})
    reply = json.loads(_proto_in.readline())
    return reply.get("text", "")


def llm_query_batched(prompts):
    """Ask several sub-questions at once (they run concurrently); answers in the same order."""
    prompts = [str(prompt) for prompt in prompts]
    if not prompts:
        return []
    _send({"op": "llm_query_batched", "prompts": prompts})
    texts = json.loads(_proto_in.readline()).get("texts", [])
    return [str(text) for text in texts]


namespace = {
    "__name__": "__main__",
    "list_files": list_files,
    "read_file": read_file,
    "search": search,
    "run": run,
    "llm_query": llm_query,
    "llm_query_batched": llm_query_batched,
}
if _allow_finish:
    namespace |= {"finish": finish, "apply_patch": apply_patch}


def _execute(code):
    out = tempfile.TemporaryFile("w+", errors="replace")  # noqa: SIM115 (closed below)
    err = tempfile.TemporaryFile("w+", errors="replace")  # noqa: SIM115 (closed below)
    saved = os.dup(1), os.dup(2)
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    started = time.monotonic()
    try:
        exec(compile(code, "<repl>", "exec"), namespace)
    except KeyboardInterrupt:
        sys.stderr.write("[interrupted: the code ran too long]\n")
    except BaseException:  # the agent's error, shown to the agent
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if os.getpid() != REPL_PID:  # a child the code forked, back from its copy of exec
            os._exit(0)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
    streams = []
    for capture in (out, err):
        capture.seek(0)
        streams.append(capture.read(MAX_CAPTURE))
        capture.close()
    return streams[0], streams[1], time.monotonic() - started


def main():
    _send({"op": "ready"})  # the sandbox works: from here on, a dead REPL is the code's doing
    for line in _proto_in:
        request = json.loads(line)
        if request.get("op") != "exec":
            continue
        _final["answer"] = None
        try:
            stdout, stderr, seconds = _execute(request["code"])
        except KeyboardInterrupt:  # arrived between statements of our own code
            stdout, stderr, seconds = "", "[interrupted]", 0.0
        _send(
            {
                "op": "done",
                "stdout": stdout,
                "stderr": stderr,
                "final_answer": _final["answer"],
                "seconds": seconds,
            }
        )


main()
