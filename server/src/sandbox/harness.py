"""docsmith sandbox harness (stdlib only, Python 3.8+).

One script, three job modes, each run in its own sandboxed process:

- "candidate": `python3 -B -s harness.py JOB.json`, one line on stdin (a nonce).
  Imports the candidate file as module `candidate`, runs each test's `call`
  text (with doctest semantics, see `_call`) under its own SIGALRM timeout and
  writes one *outcome* per test: the value as an exact-type JSON tree (see
  `_tree`), the captured stdout, or the exception (type, MRO names, message,
  traceback tail), or a timeout. This process never sees expected values: its
  job holds only ids and calls.
  Everything it writes is untrusted data (the candidate shares the process and
  can rewrite any of it); it decides nothing.
- "referee": `python3 -I -B harness.py JOB.json`. Never imports or runs
  candidate code. Receives the expected texts (with any doctest option flags)
  and the outcomes, rebuilds each value tree into fresh built-in objects and
  decides pass/fail (see `_judge`).
- "script": run a whole script as `__main__` (benchmarks with hidden tests).

Channel: before candidate code runs, the original stdout is moved to a private,
non-inheritable fd and fd 1 points at stderr, so ordinary prints never reach
the channel. Every channel line is JSON prefixed with the nonce.
"""

import _ast as ast  # the node classes without `ast.py` and its imports (start-up time)
import io
import json
import math
import os
import signal
import sys
import time

_HARNESS_FILE = os.path.abspath(__file__)

# Limits of one serialised value: tree depth, node count, and characters of
# strings/bytes/reprs in all. A value past a limit becomes a "big" node, which
# equals nothing. With MAX_STDOUT they keep an outcome line under the host's
# 1 MiB cap even when every character is JSON-escaped to 6 bytes.
MAX_DEPTH = 32
MAX_NODES = 100000
MAX_CHARS = 128 * 1024
# Repr kept for an object the tree cannot represent (compared as doctest text).
MAX_OBJ_REPR = 64 * 1024
# Captured stdout kept per test.
MAX_STDOUT = 32 * 1024
# Ints this small travel as JSON numbers; bigger ones as strings.
SAFE_INT = 2 ** 53
# Compile flag that allows `await` at the top level of a test's call (3.8+),
# and the code flag of a code object whose evaluation returns a coroutine.
_TOP_LEVEL_AWAIT = getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0x2000)
_CO_COROUTINE = 0x80


class _HarnessTimeout(BaseException):
    """Raised by the SIGALRM handler; a BaseException so `except Exception` in
    candidate code does not swallow it."""


def _on_alarm(signum, frame):
    raise _HarnessTimeout()


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


def _clean_text(text):
    """`text` with lone surrogates replaced, so that it is valid UTF-8 JSON."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _parse(src, filename, mode):
    return compile(src, filename, mode, ast.PyCF_ONLY_AST)


def _format_exc(exc, limit=1500):
    """Last lines of the traceback, without the harness's own frames."""
    try:
        import traceback

        frames = [
            f
            for f in traceback.extract_tb(exc.__traceback__)
            if os.path.abspath(f.filename) != _HARNESS_FILE
        ]
        lines = ["Traceback (most recent call last):\n"]
        lines += traceback.format_list(frames)
        lines += traceback.format_exception_only(type(exc), exc)
        return _clean_text(_tail("".join(lines), limit))
    except BaseException:
        return "%s: <traceback unavailable>" % _type_name(exc)


def _exc_message(exc):
    try:
        return _clean_text(_trunc(str(exc), 1000))
    except BaseException:
        return "<str failed>"


def _type_name(obj):
    try:
        return _clean_text(str(type(obj).__name__))
    except BaseException:
        return "<unknown>"


def _qualname(obj):
    try:
        t = type(obj)
        return "%s.%s" % (t.__module__, t.__qualname__)
    except BaseException:
        return "<unknown>"


def _norm_text(text):
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


# ---------------------------------------------------------------- value trees
#
# A value tree is JSON with exact types only (`type(v) is X`, never isinstance):
#   {"t":"none"} {"t":"bool","v":true} {"t":"int","v":5 | "123456..." | "0x..."}
#   {"t":"float","v":"0.1"} (repr: nan, inf, -inf survive) {"t":"complex","re":R,"im":I}
#   {"t":"str","v":"..."} or {"t":"str","hex":UTF-8 with surrogates, hex}
#   {"t":"bytes","hex":"00ff"} {"t":"list"|"tuple"|"set"|"frozenset","v":[...]}
#   {"t":"dict","v":[[key, value], ...]}
#   {"t":"obj","type":"module.Qualname","repr":"..."} anything else, subclasses included
#   {"t":"big","repr":"..."} a value past the depth / node / size limits


class _TooBig(Exception):
    pass


class _Budget:
    def __init__(self, nodes=MAX_NODES, chars=MAX_CHARS, depth=MAX_DEPTH):
        self.nodes = nodes
        self.chars = chars
        self.depth = depth

    def take(self, chars=0):
        self.nodes -= 1
        self.chars -= chars
        if self.nodes < 0 or self.chars < 0:
            raise _TooBig()


def _int_text(v):
    if -SAFE_INT < v < SAFE_INT:
        return v
    try:
        return str(v)
    except ValueError:  # past sys.int_info.str_digits_check_threshold
        return hex(v)


def _tree(v, budget, depth=0):
    if depth > budget.depth:
        raise _TooBig()
    t = type(v)
    if v is None:
        budget.take()
        return {"t": "none"}
    if t is bool:
        budget.take()
        return {"t": "bool", "v": v}
    if t is int:
        text = _int_text(v)
        budget.take(len(text) if type(text) is str else 0)
        return {"t": "int", "v": text}
    if t is float:
        budget.take()
        return {"t": "float", "v": float.__repr__(v)}
    if t is complex:
        budget.take()
        return {"t": "complex", "re": float.__repr__(v.real), "im": float.__repr__(v.imag)}
    if t is str:
        budget.take(len(v))
        try:
            v.encode("utf-8")
            return {"t": "str", "v": v}
        except UnicodeEncodeError:
            return {"t": "str", "hex": v.encode("utf-8", "surrogatepass").hex()}
    if t is bytes:
        budget.take(2 * len(v))
        return {"t": "bytes", "hex": v.hex()}
    if t is list or t is tuple or t is set or t is frozenset:
        budget.take()
        return {"t": t.__name__, "v": [_tree(x, budget, depth + 1) for x in v]}
    if t is dict:
        budget.take()
        pairs = [
            [_tree(k, budget, depth + 1), _tree(x, budget, depth + 1)]
            for k, x in dict.items(v)
        ]
        return {"t": "dict", "v": pairs}
    text = _clean_text(_safe_repr(v, MAX_OBJ_REPR))
    budget.take(len(text))
    return {"t": "obj", "type": _clean_text(_qualname(v)), "repr": text}


def _value_tree(v):
    """The tree of `v`, or a "big" node when it is past the limits."""
    try:
        return _tree(v, _Budget())
    except _TooBig:
        return {"t": "big", "repr": _clean_text(_safe_repr(v, 200))}
    except RecursionError:
        return {"t": "big", "repr": "<too deep>"}


# ---------------------------------------------------------------- candidate side


class _Channel:
    def __init__(self, channel_fd, nonce):
        self._chan = os.fdopen(channel_fd, "w", encoding="utf-8", closefd=True)
        self._nonce = nonce

    def emit(self, obj):
        self._chan.write(self._nonce + json.dumps(obj, ensure_ascii=False) + "\n")
        self._chan.flush()


def _load(chan, path, timeout_s, name="candidate", search=()):
    """Imports the candidate file as module `name` (its real dotted name in
    the user's project, so that `from .models import Order` resolves through
    the read-only project folders in `search`, put first on sys.path)."""
    import importlib.util

    if type(name) is not str or not name:
        name = "candidate"
    sys.path[:0] = [p for p in search if type(p) is str]
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except _HarnessTimeout:
        signal.setitimer(signal.ITIMER_REAL, 0)
        chan.emit(
            {
                "event": "load_error",
                "error": "importing the candidate module took longer than %d ms"
                % int(timeout_s * 1000),
            }
        )
        return None
    except BaseException as exc:
        signal.setitimer(signal.ITIMER_REAL, 0)
        text = "%s: %s\n%s" % (_type_name(exc), _exc_message(exc), _format_exc(exc))
        chan.emit({"event": "load_error", "error": _tail(text, 2000)})
        return None
    signal.setitimer(signal.ITIMER_REAL, 0)
    chan.emit({"event": "loaded"})
    return module


async def _coroutine_probe():
    pass


def _coroutine_type():
    probe = _coroutine_probe()
    probe.close()
    return type(probe)


# The type of an `async def` function's result, without importing `types`.
_COROUTINE = _coroutine_type()


def _run_async(coro):
    """Runs `coro` to its end in a fresh event loop; asyncio is imported only
    by the tests that need it (start-up time)."""
    try:
        import asyncio
    except BaseException:
        coro.close()  # never started: no "was never awaited" warning
        raise
    return asyncio.run(coro)


async def _setup_then_eval(setup, expr, ns, captured):
    """A call with top-level `await`: set-up and expression run in one event
    loop (tasks, locks and queues made by the set-up stay usable)."""
    if setup.co_flags & _CO_COROUTINE:
        await eval(setup, ns)
    else:
        exec(setup, ns)
    captured.seek(0)
    captured.truncate()
    value = eval(expr, ns)
    if expr.co_flags & _CO_COROUTINE:
        value = await value
    if type(value) is _COROUTINE:
        value = await value
    return value


def _call(module, case, timeout_s):
    """Runs one test's call text; returns its outcome (a JSON-safe dict).

    Doctest semantics: when the text ends with an expression, the statements
    before it are set-up lines (earlier examples, replayed) and what they print
    is discarded; the outcome holds what the expression printed and its value.
    `await` may appear at the top level, and a coroutine value (an `async def`
    function called plainly) is run to its result, in one event loop per test.
    A text of statements only keeps all it printed; its value is None."""
    test_id = case["id"]
    filename = "<test %s>" % test_id
    ns = dict(module.__dict__)
    captured = io.StringIO()
    value = None
    raised = None
    timed_out = False
    old_stdout = sys.stdout
    sys.stdout = captured
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        tree = _parse(case["call"], filename, "exec")
        last = tree.body[-1] if tree.body else None
        if isinstance(last, ast.Expr):
            setup = ast.Module(body=tree.body[:-1], type_ignores=[])
            setup = compile(setup, filename, "exec", _TOP_LEVEL_AWAIT)
            expr = ast.Expression(body=last.value)
            expr = compile(expr, filename, "eval", _TOP_LEVEL_AWAIT)
            if (setup.co_flags | expr.co_flags) & _CO_COROUTINE:
                value = _run_async(_setup_then_eval(setup, expr, ns, captured))
            else:
                exec(setup, ns)
                # The same stream, emptied (as doctest's own): a set-up line
                # may have kept a reference to sys.stdout.
                captured.seek(0)
                captured.truncate()
                value = eval(expr, ns)
                if type(value) is _COROUTINE:
                    value = _run_async(value)
        else:
            code = compile(tree, filename, "exec", _TOP_LEVEL_AWAIT)
            if code.co_flags & _CO_COROUTINE:
                # `eval`, not `exec`: the code's value is the coroutine to run.
                _run_async(eval(code, ns))
            else:
                exec(code, ns)
    except _HarnessTimeout:
        timed_out = True
    except BaseException as exc:
        raised = exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        sys.stdout = old_stdout
    if timed_out:
        return {"kind": "timeout"}
    # Serialising may run candidate code (a hostile __repr__): bound it too.
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        try:
            printed = captured.getvalue()
        except BaseException:
            printed = ""
        out = {
            "stdout": _clean_text(printed[:MAX_STDOUT]),
            "stdout_truncated": len(printed) > MAX_STDOUT,
        }
        if raised is not None:
            try:
                mro = [_clean_text(str(k.__name__)) for k in type(raised).__mro__]
            except BaseException:
                mro = [_type_name(raised)]
            out.update(
                kind="raised",
                type=_type_name(raised),
                mro=mro,
                message=_exc_message(raised),
                traceback=_format_exc(raised),
            )
        else:
            out.update(kind="value", value=_value_tree(value))
        signal.setitimer(signal.ITIMER_REAL, 0)
        return out
    except _HarnessTimeout:
        return {"kind": "timeout"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def run_candidate(chan, job):
    timeout_s = max(job.get("per_test_timeout_ms", 3000), 1) / 1000.0
    module = _load(
        chan,
        job["module_path"],
        timeout_s,
        job.get("module_name", "candidate"),
        job.get("sys_path") or (),
    )
    if module is None:
        return
    for case in job["tests"]:
        chan.emit({"event": "start", "test_id": case["id"]})
        started = time.monotonic()
        outcome = _call(module, case, timeout_s)
        chan.emit(
            {
                "event": "outcome",
                "test_id": case["id"],
                "duration_ms": int((time.monotonic() - started) * 1000),
                "outcome": outcome,
            }
        )


# ---------------------------------------------------------------- referee side


class _Malformed(Exception):
    pass


class _Opaque:
    """An object the candidate's process could not render as a tree: equal only
    to another _Opaque of the same type name and repr; its repr is the one the
    candidate's process gave (doctest text comparison)."""

    __slots__ = ("type_name", "text")

    def __init__(self, type_name, text):
        self.type_name = type_name
        self.text = text

    def __eq__(self, other):
        return (
            type(other) is _Opaque
            and self.type_name == other.type_name
            and self.text == other.text
        )

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash((self.type_name, self.text))

    def __repr__(self):
        return self.text


class _Big(_Opaque):
    """A value past the limits: equal to nothing, itself included."""

    __slots__ = ()

    def __eq__(self, other):
        return False

    def __hash__(self):
        return id(self)


def _text_field(node, key):
    v = node.get(key)
    if type(v) is not str:
        raise _Malformed("%s is not a string" % key)
    return v


def _float_field(node, key):
    v = _text_field(node, key)
    if len(v) > 64:
        raise _Malformed("float text too long")
    return float(v)


def _rebuild(node, budget, depth=0):
    """Fresh built-in objects from a value tree (untrusted JSON)."""
    if depth > budget.depth:
        raise _Malformed("tree too deep")
    if type(node) is not dict:
        raise _Malformed("node is not an object")
    budget.take()
    t = node.get("t")
    if t == "none":
        return None
    if t == "bool":
        v = node.get("v")
        if type(v) is not bool:
            raise _Malformed("bad bool")
        return v
    if t == "int":
        v = node.get("v")
        if type(v) is int:
            return v
        if type(v) is not str or len(v) > 8000:
            raise _Malformed("bad int")
        if v.startswith(("0x", "-0x")):
            return int(v, 16)
        return int(v)
    if t == "float":
        return _float_field(node, "v")
    if t == "complex":
        return complex(_float_field(node, "re"), _float_field(node, "im"))
    if t == "str":
        if "hex" in node:
            return bytes.fromhex(_text_field(node, "hex")).decode("utf-8", "surrogatepass")
        return _text_field(node, "v")
    if t == "bytes":
        return bytes.fromhex(_text_field(node, "hex"))
    if t in ("list", "tuple", "set", "frozenset"):
        items = node.get("v")
        if type(items) is not list:
            raise _Malformed("bad %s" % t)
        built = [_rebuild(x, budget, depth + 1) for x in items]
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[t](built)
    if t == "dict":
        pairs = node.get("v")
        if type(pairs) is not list:
            raise _Malformed("bad dict")
        out = {}
        for pair in pairs:
            if type(pair) is not list or len(pair) != 2:
                raise _Malformed("bad dict pair")
            out[_rebuild(pair[0], budget, depth + 1)] = _rebuild(pair[1], budget, depth + 1)
        return out
    if t == "obj":
        return _Opaque(_text_field(node, "type")[:300], _text_field(node, "repr"))
    if t == "big":
        return _Big("<too large>", _text_field(node, "repr")[:300])
    raise _Malformed("unknown node type")


def _key_tree(v):
    """Canonical tree of a rebuilt value for the outcome key: floats rounded to 12
    significant digits, set elements and dict pairs sorted."""
    t = type(v)
    if v is None:
        return {"t": "none"}
    if t is bool:
        return {"t": "bool", "v": v}
    if t is int:
        return {"t": "int", "v": _int_text(v)}
    if t is float:
        return {"t": "float", "v": _round12(v)}
    if t is complex:
        return {"t": "complex", "re": _round12(v.real), "im": _round12(v.imag)}
    if t is str:
        try:
            v.encode("utf-8")
            return {"t": "str", "v": v}
        except UnicodeEncodeError:
            return {"t": "str", "hex": v.encode("utf-8", "surrogatepass").hex()}
    if t is bytes:
        return {"t": "bytes", "hex": v.hex()}
    if t is list or t is tuple:
        return {"t": t.__name__, "v": [_key_tree(x) for x in v]}
    if t is set or t is frozenset:
        items = [_key_tree(x) for x in v]
        items.sort(key=_canon)
        return {"t": t.__name__, "v": items}
    if t is dict:
        pairs = [[_key_tree(k), _key_tree(x)] for k, x in v.items()]
        pairs.sort(key=_canon)
        return {"t": "dict", "v": pairs}
    if t is _Big:
        return {"t": "big", "repr": v.text}
    return {"t": "obj", "type": v.type_name, "repr": v.text}


def _round12(x):
    if x == 0:
        return "0"  # 0.0 and -0.0 are equal outputs
    return "%.12g" % x


def _canon(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _same(a, b):
    """Strict equality of two rebuilt values: same exact types (bool is not int,
    list is not tuple), except that int and float compare numerically; floats
    (and complex parts) with rel 1e-6 / abs 1e-9 tolerance; nan equals nan."""
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return ta is tb and a == b
    if ta in (int, float) and tb in (int, float):
        if ta is int and tb is int:
            return a == b
        return _close_float(a, b)
    if ta is not tb:
        return False
    if ta is complex:
        return _close_float(a.real, b.real) and _close_float(a.imag, b.imag)
    if ta is list or ta is tuple:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if ta is dict:
        if len(a) != len(b) or a.keys() != b.keys():
            return False
        b_keys = {k: k for k in b}
        return all(_same(k, b_keys[k]) and _same(a[k], b[k]) for k in a)
    if ta is set or ta is frozenset:
        if a != b:
            return False
        b_items = {x: x for x in b}
        return all(_same(x, b_items[x]) for x in a)
    return a == b


def _close_float(a, b):
    try:
        if math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    except (OverflowError, TypeError, ValueError):
        return False


# The expected text is evaluated without `eval`: literals, containers, unary and
# binary arithmetic on them, a few pure built-in constructors and `math`
# functions and constants. Expected texts come from the docstring and from the
# test designer (an LLM): none of them may run code in the referee.
_SAFE_CALLS = {
    "float": float,
    "int": int,
    "complex": complex,
    "str": str,
    "bytes": bytes,
    "bool": bool,
    "list": list,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "dict": dict,
    "range": range,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sum": sum,
    "len": len,
    "sorted": sorted,
    "chr": chr,
    "ord": ord,
    "divmod": divmod,
}
_SAFE_NAMES = {"inf": math.inf, "nan": math.nan, "True": True, "False": False, "None": None}
_MATH_OK = {
    name
    for name in dir(math)
    if not name.startswith("_") and (callable(getattr(math, name)) or type(getattr(math, name)) is float)
}
_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a ** b,
}
_MAX_BUILT = 10 ** 6


class _NotExpression(Exception):
    pass


def _check_size(v):
    if type(v) in (str, bytes, list, tuple) and len(v) > _MAX_BUILT:
        raise _NotExpression("too large")
    if type(v) is int and v.bit_length() > 100000:
        raise _NotExpression("too large")
    return v


def _safe_value(node):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_safe_value(e) for e in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise _NotExpression("** in a dict")
        return {_safe_value(k): _safe_value(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
        v = _safe_value(node.operand)
        if isinstance(node.op, ast.Not):
            return not v
        if type(v) not in (int, float, complex, bool):
            raise _NotExpression("unary operand")
        return -v if isinstance(node.op, ast.USub) else +v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a = _safe_value(node.left)
        b = _safe_value(node.right)
        if isinstance(node.op, ast.Pow) and type(b) is int and abs(b) > 10000:
            raise _NotExpression("exponent too large")
        if isinstance(node.op, ast.Mult):
            for seq, n in ((a, b), (b, a)):
                if type(seq) in (str, bytes, list, tuple) and type(n) is int:
                    if n * len(seq) > _MAX_BUILT:
                        raise _NotExpression("too large")
        if isinstance(node.op, ast.Mod) and type(a) in (str, bytes):
            raise _NotExpression("% formatting")
        return _check_size(_BINOPS[type(node.op)](a, b))
    if isinstance(node, ast.Name):
        if node.id in _SAFE_NAMES:
            return _SAFE_NAMES[node.id]
        raise _NotExpression("name %s" % node.id)
    if isinstance(node, ast.Attribute):
        if isinstance(node.value, ast.Name) and node.value.id == "math" and node.attr in _MATH_OK:
            return getattr(math, node.attr)
        raise _NotExpression("attribute")
    if isinstance(node, ast.Call):
        if node.keywords:
            raise _NotExpression("keyword arguments")
        func = node.func
        if isinstance(func, ast.Name) and func.id in _SAFE_CALLS:
            f = _SAFE_CALLS[func.id]
        elif isinstance(func, ast.Attribute):
            f = _safe_value(func)
            if not callable(f):
                raise _NotExpression("call")
        else:
            raise _NotExpression("call")
        args = [_safe_value(a) for a in node.args]
        for a in args:
            if type(a) is range and len(a) > _MAX_BUILT:
                raise _NotExpression("too large")
        return _check_size(f(*args))
    raise _NotExpression(type(node).__name__)


def _expected_value(src):
    """(True, value) when `src` is an expression the referee can evaluate
    safely, else (False, None): then it is doctest output text."""
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        tree = _parse(src.strip(), "<expected>", "eval")
        value = _safe_value(tree.body)
        # Normalise through a tree, as the candidate's values are.
        value = _rebuild(_value_tree(value), _Budget(nodes=10 ** 7, chars=10 ** 9))
        return True, value
    except BaseException:
        return False, None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


# Doctest option flags a test may carry ("options": a list of names).
_DOCTEST_OPTIONS = (
    "ELLIPSIS",
    "NORMALIZE_WHITESPACE",
    "IGNORE_EXCEPTION_DETAIL",
    "DONT_ACCEPT_BLANKLINE",
)


def _doctest_flags(options):
    """The doctest flags named in a test's "options" (unknown names ignored), or
    0 when none of them changes how output text compares (ELLIPSIS,
    NORMALIZE_WHITESPACE): doctest is imported only for such a test."""
    if type(options) is not list:
        return 0
    names = {o for o in options if type(o) is str and o in _DOCTEST_OPTIONS}
    if "ELLIPSIS" not in names and "NORMALIZE_WHITESPACE" not in names:
        return 0
    import doctest

    flags = 0
    for name in names:
        flags |= getattr(doctest, name)
    return flags


def _doctest_check(expected_src, printed, value, flags):
    """(passed, want, got): doctest's own comparison of the expected text with
    what the call printed followed by its value's repr line."""
    import doctest

    want = expected_src.rstrip("\n")
    if want:
        want += "\n"
    got = printed
    if value is not None:
        got += _safe_repr(value, 100000) + "\n"
    return doctest.OutputChecker().check_output(want, got, flags), want, got


def _output_message(want, got):
    return "expected output %s, got %s" % (
        _safe_repr(_trunc(want, 200)),
        _safe_repr(_trunc(got, 200)),
    )


def _judge(test, outcome, expected_cache):
    """The verdict on one outcome: a dict with passed, error_type, message,
    traceback, actual, key.

    A test with doctest options ELLIPSIS or NORMALIZE_WHITESPACE (and no
    `raises`) passes when doctest's comparison of its output text does, or else
    when the usual comparison does; the key never depends on the options."""
    out = {
        "passed": False,
        "error_type": None,
        "message": None,
        "traceback": None,
        "actual": None,
        "key": None,
    }
    kind = outcome.get("kind") if type(outcome) is dict else None
    raises = test.get("raises")
    if kind == "raised":
        exc_type = _text_field(outcome, "type")[:200]
        message = _text_field(outcome, "message")[:1000]
        mro = outcome.get("mro")
        if type(mro) is not list or not all(type(m) is str for m in mro):
            raise _Malformed("bad mro")
        out["key"] = _canon({"raised": exc_type})
        if raises:
            wanted = raises.strip().rsplit(".", 1)[-1]
            if wanted in mro:
                out["passed"] = True
                out["message"] = "%s: %s" % (exc_type, message)
                return out
            out["error_type"] = exc_type
            out["message"] = "expected %s, got %s: %s" % (raises, exc_type, message)
        else:
            out["error_type"] = exc_type
            out["message"] = message
        tb = outcome.get("traceback")
        out["traceback"] = _tail(tb, 1500) if type(tb) is str else None
        return out
    if kind != "value":
        raise _Malformed("unknown outcome kind")
    value = _rebuild(outcome.get("value"), _Budget(nodes=MAX_NODES + 10, chars=10 ** 9))
    printed = outcome.get("stdout", "")
    if type(printed) is not str:
        raise _Malformed("bad stdout")
    key = {"value": _key_tree(value)}
    if printed.strip():
        key["printed"] = _norm_text(printed)
    out["key"] = _canon(key if "printed" in key else key["value"])
    out["actual"] = _safe_repr(value)
    if raises:
        out["error_type"] = "AssertionError"
        out["message"] = "expected %s to be raised, got %s" % (raises, _safe_repr(value, 200))
        return out
    expected_src = test.get("expected", "")
    text_failure = None
    flags = _doctest_flags(test.get("options"))
    if flags and type(value) is not _Big:  # a truncated repr is no output text
        matched, want, got = _doctest_check(expected_src, printed, value, flags)
        if matched:
            out["passed"] = True
            return out
        text_failure = _output_message(_norm_text(want), _norm_text(got))
    if expected_src not in expected_cache:
        expected_cache[expected_src] = _expected_value(expected_src)
    is_expr, expected = expected_cache[expected_src]
    if is_expr:
        if _same(value, expected):
            out["passed"] = True
            return out
        # A function that prints its answer: `>>> show([1, 2])` then `[1, 2]`.
        if value is None and printed.strip() and _norm_text(printed) == _norm_text(expected_src):
            out["passed"] = True
            return out
        out["error_type"] = "AssertionError"
        out["message"] = "expected %s, got %s" % (
            _safe_repr(expected, 200),
            _safe_repr(value, 200),
        )
        if isinstance(value, _Opaque) and not isinstance(expected, _Opaque):
            out["message"] += " (an object of type %s, which equals no built-in value)" % (
                _trunc(value.type_name, 100)
            )
        if text_failure:
            out["message"] = text_failure
        return out
    # doctest writes an empty line of output as <BLANKLINE>.
    want = _norm_text(expected_src.replace("<BLANKLINE>", ""))
    seen = [_norm_text(printed)]
    if value is not None:
        rep = _safe_repr(value, 100000)
        seen.append(_norm_text(rep))
        seen.append(_norm_text(printed + rep))
    if want in seen:
        out["passed"] = True
        return out
    got = seen[-1] if value is not None else seen[0]
    out["error_type"] = "AssertionError"
    out["message"] = text_failure or _output_message(want, got)
    return out


def run_referee(chan, job, lines):
    """`lines`: the stdin lines after the header, one JSON item each
    ({"test_id", "outcome"}), judged one at a time so that memory stays bounded."""
    tests = {t["id"]: t for t in job["tests"]}
    expected_cache = {}
    for n, line in enumerate(lines):
        try:
            item = json.loads(line)
            test = tests[item["test_id"]]
            verdict = _judge(test, item["outcome"], expected_cache)
        except BaseException as exc:
            verdict = {
                "passed": False,
                "error_type": "BadOutcome",
                "message": "the candidate's process sent an outcome the referee cannot read (%s)"
                % _trunc(_exc_message(exc) or _type_name(exc), 200),
                "traceback": None,
                "actual": None,
                "key": None,
            }
        verdict["event"] = "verdict"
        verdict["item"] = n
        chan.emit(verdict)


# ---------------------------------------------------------------- main


def main():
    stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    nonce = stdin.readline().strip()
    with open(sys.argv[1], encoding="utf-8") as fh:
        job = json.load(fh)
    mode = job.get("mode")
    if mode == "referee":
        # The expected values, then one outcome per line, arrive on stdin once
        # every candidate has finished (this process starts early to hide its
        # start-up time). EOF first: nothing to judge.
        header = stdin.readline()
        if not header.strip():
            return
        job.update(json.loads(header))
    else:
        # Candidate code reads nothing from the pipe.
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        sys.stdin = open(os.devnull, "r")
    _set_process_limit()
    if mode == "script":
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
    chan = _Channel(channel_fd, nonce)
    chan.emit({"event": "ready"})
    signal.signal(signal.SIGALRM, _on_alarm)
    if mode == "candidate":
        run_candidate(chan, job)
    elif mode == "referee":
        run_referee(chan, job, stdin)
    chan.emit({"event": "done"})


if __name__ == "__main__":
    main()
