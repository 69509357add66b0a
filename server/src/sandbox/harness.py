"""docsmith sandbox harness (stdlib only, Python 3.11).

Run as `python3 -B -s harness.py JOB.json`, with one line on stdin: a nonce.
Before any candidate code runs, the harness moves the results channel (the
original stdout) to a private, non-inheritable fd and points fd 1 at stderr, so
the candidate's prints (raw or not) never reach the channel. Every channel line
is JSON prefixed with the nonce, which the candidate never sees on disk or in
the environment.

Job modes:
- "tests": import the candidate file as module `candidate`, then run each test
  case with its own SIGALRM timeout and write one result line per test.
- "script": run a whole script as `__main__` (benchmarks with hidden tests).
"""

import ast
import io
import json
import math
import os
import signal
import sys
import time
import traceback

_HARNESS_FILE = os.path.abspath(__file__)


class _HarnessTimeout(BaseException):
    """Raised by the SIGALRM handler; a BaseException so `except Exception` in
    candidate code does not swallow it."""


def _set_process_limit():
    # Inside a bwrap user namespace RLIMIT_NPROC is counted per namespace
    # (Linux >= 5.14), so lowering it here contains a fork bomb to this run.
    limit = os.environ.pop("DOCSMITH_NPROC", None)
    if not limit:
        return
    try:
        import resource

        n = int(limit)
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
    except (ValueError, OSError, ImportError):
        pass


def _trunc(text, limit):
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def _tail(text, limit):
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return "..." + data[-(limit - 3) :].decode("utf-8", "replace")


def _safe_repr(value, limit=500):
    try:
        return _trunc(repr(value), limit)
    except BaseException as exc:  # a hostile __repr__
        return "<repr failed: %s>" % type(exc).__name__


def _format_exc(exc, limit=1500):
    """Last lines of the traceback, without the harness's own frames."""
    try:
        frames = [
            f
            for f in traceback.extract_tb(exc.__traceback__)
            if os.path.abspath(f.filename) != _HARNESS_FILE
        ]
        lines = ["Traceback (most recent call last):\n"]
        lines += traceback.format_list(frames)
        lines += traceback.format_exception_only(type(exc), exc)
        return _tail("".join(lines), limit)
    except BaseException:
        return "%s: <traceback unavailable>" % type(exc).__name__


def _exc_message(exc):
    try:
        return _trunc(str(exc), 1000)
    except BaseException:
        return "<str failed>"


def _close(a, b):
    """Equality with float tolerance, also inside lists, tuples and dicts."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if math.isnan(a) and math.isnan(b):
                return True
            return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
        return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return False
        return all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return False
        return all(_close(a[k], b[k]) for k in a)
    result = a == b
    if not isinstance(result, bool):  # numpy-like arrays
        result = bool(getattr(result, "all", lambda: result)())
    return result


def _norm_text(text):
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


class Harness:
    def __init__(self, channel_fd, nonce):
        self._chan = os.fdopen(channel_fd, "w", encoding="utf-8", closefd=True)
        self._nonce = nonce

    def emit(self, obj):
        self._chan.write(self._nonce + json.dumps(obj) + "\n")
        self._chan.flush()

    def run_tests(self, job):
        timeout_s = max(job.get("per_test_timeout_ms", 3000), 1) / 1000.0
        module = self._load(job["module_path"], timeout_s)
        if module is None:
            return
        for case in job["tests"]:
            self.emit({"event": "start", "test_id": case["id"]})
            result = self._run_one(module, case, timeout_s)
            result["event"] = "result"
            self.emit(result)

    def _load(self, path, timeout_s):
        import importlib.util

        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            spec = importlib.util.spec_from_file_location("candidate", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules["candidate"] = module
            spec.loader.exec_module(module)
        except _HarnessTimeout:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.emit(
                {
                    "event": "load_error",
                    "error": "importing the candidate module took longer than %d ms"
                    % int(timeout_s * 1000),
                }
            )
            return None
        except BaseException as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            text = "%s: %s\n%s" % (type(exc).__name__, _exc_message(exc), _format_exc(exc))
            self.emit({"event": "load_error", "error": _tail(text, 2000)})
            return None
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.emit({"event": "loaded"})
        return module

    def _run_one(self, module, case, timeout_s):
        test_id = case["id"]
        raises = case.get("raises")
        expected_src = case.get("expected", "")
        ns = dict(module.__dict__)
        captured = io.StringIO()
        started = time.monotonic()
        result_value = None
        raised = None
        timed_out = False
        old_stdout = sys.stdout
        sys.stdout = captured
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            tree = ast.parse(case["call"], "<test %s>" % test_id, "exec")
            last = tree.body[-1] if tree.body else None
            if isinstance(last, ast.Expr):
                setup = ast.Module(body=tree.body[:-1], type_ignores=[])
                exec(compile(setup, "<test %s>" % test_id, "exec"), ns)
                expr = ast.Expression(body=last.value)
                result_value = eval(compile(expr, "<test %s>" % test_id, "eval"), ns)
            else:
                exec(compile(tree, "<test %s>" % test_id, "exec"), ns)
        except _HarnessTimeout:
            timed_out = True
        except BaseException as exc:
            raised = exc
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            sys.stdout = old_stdout
        duration_ms = int((time.monotonic() - started) * 1000)
        out = {
            "test_id": test_id,
            "passed": False,
            "error_type": None,
            "message": None,
            "traceback": None,
            "actual": None,
            "duration_ms": duration_ms,
        }
        if timed_out:
            out["error_type"] = "Timeout"
            out["message"] = "test exceeded its timeout of %d ms" % int(timeout_s * 1000)
            return out
        printed = captured.getvalue()
        if raises:
            if raised is None:
                out["error_type"] = "AssertionError"
                out["actual"] = _safe_repr(result_value)
                out["message"] = "expected %s to be raised, got %s" % (
                    raises,
                    _safe_repr(result_value, 200),
                )
                return out
            names = {k.__name__ for k in type(raised).__mro__}
            wanted = raises.strip().rsplit(".", 1)[-1]
            if wanted in names:
                out["passed"] = True
                out["message"] = "%s: %s" % (type(raised).__name__, _exc_message(raised))
                return out
            out["error_type"] = type(raised).__name__
            out["message"] = "expected %s, got %s: %s" % (
                raises,
                type(raised).__name__,
                _exc_message(raised),
            )
            out["traceback"] = _format_exc(raised)
            return out
        if raised is not None:
            out["error_type"] = type(raised).__name__
            out["message"] = _exc_message(raised)
            out["traceback"] = _format_exc(raised)
            return out
        out["actual"] = _safe_repr(result_value)
        self._compare(module, expected_src, result_value, printed, out)
        return out

    def _compare(self, module, expected_src, value, printed, out):
        expected_value = None
        is_expr = False
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        try:
            expected_value = eval(compile(expected_src, "<expected>", "eval"), dict(module.__dict__))
            is_expr = True
        except BaseException:
            is_expr = False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if is_expr:
            try:
                ok = _close(value, expected_value)
            except BaseException:
                ok = False
            if ok:
                out["passed"] = True
                return
            # A function that prints its answer: `>>> show([1, 2])` then `[1, 2]`.
            if value is None and printed.strip() and _norm_text(printed) == _norm_text(expected_src):
                out["passed"] = True
                return
            out["error_type"] = "AssertionError"
            out["message"] = "expected %s, got %s" % (
                _safe_repr(expected_value, 200),
                _safe_repr(value, 200),
            )
            return
        want = _norm_text(expected_src)
        candidates = [_norm_text(printed)]
        if value is not None:
            rep = _safe_repr(value, 100000)
            candidates.append(_norm_text(rep))
            candidates.append(_norm_text(printed + rep))
        if want in candidates:
            out["passed"] = True
            return
        got = candidates[-1] if value is not None else candidates[0]
        out["error_type"] = "AssertionError"
        out["message"] = "expected output %s, got %s" % (
            _safe_repr(_trunc(want, 200)),
            _safe_repr(_trunc(got, 200)),
        )


def _on_alarm(signum, frame):
    raise _HarnessTimeout()


def main():
    nonce = sys.stdin.readline().strip()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdin = open(os.devnull, "r")
    _set_process_limit()
    with open(sys.argv[1], encoding="utf-8") as fh:
        job = json.load(fh)
    if job.get("mode") == "script":
        # A whole script: its stdout and stderr go to the caller as they are.
        import runpy

        sys.argv = [job["script_path"]]
        runpy.run_path(job["script_path"], run_name="__main__")
        return
    # Private results channel: the original stdout, moved to a fresh fd that is
    # not inherited by subprocesses; fd 1 now points at stderr.
    channel_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    harness = Harness(channel_fd, nonce)
    harness.emit({"event": "ready"})
    signal.signal(signal.SIGALRM, _on_alarm)
    harness.run_tests(job)
    harness.emit({"event": "done"})


if __name__ == "__main__":
    main()
