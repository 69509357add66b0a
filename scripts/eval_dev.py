#!/usr/bin/env python3
"""Run `docsmith generate --yes --apply` on the first N tasks of a HumanEval-format
file, each prompt written as a stub into a fresh workspace, then score the final
file with the task's hidden `test` + `check(entry_point)` OUTSIDE the loop
(docsmith never sees the `test` field). Prints one line per task and a summary.

Usage: scripts/eval_dev.py [--limit 10] [--dataset ../shared/bench/humaneval-dev.jsonl] [--bin target/release/docsmith]
This is the interim harness for issue 2; `docsmith bench` (issue 5) replaces it.
"""
import argparse, json, os, shutil, sqlite3, statistics, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--limit", type=int, default=10)
ap.add_argument("--dataset", default=os.path.join(os.path.dirname(__file__), "../../shared/bench/humaneval-dev.jsonl"))
ap.add_argument("--bin", default="target/release/docsmith")
ap.add_argument("--out", default=None, help="write per-task JSON lines here")
args = ap.parse_args()

tasks = [json.loads(l) for l in open(args.dataset)][: args.limit]
rows = []
for t in tasks:
    ws = tempfile.mkdtemp(prefix="docsmith-eval-")
    os.mkdir(os.path.join(ws, ".git"))
    stub = os.path.join(ws, "task.py")
    with open(stub, "w") as f:
        f.write(t["prompt"])
    t0 = time.time()
    p = subprocess.run([args.bin, "generate", stub, "--function", t["entry_point"], "--yes", "--apply", "--json"],
                       capture_output=True, text=True)
    wall = time.time() - t0
    # Score outside the loop: the final file (or the best attempt's code when nothing was applied).
    code = open(stub).read()
    try:
        outcome = json.loads(p.stdout.strip().splitlines()[-1])
        if outcome.get("status") != "accepted" and outcome.get("proposal"):
            code = outcome["proposal"]["new_source"]
    except Exception:
        outcome = {}
    score_dir = tempfile.mkdtemp(prefix="docsmith-score-")
    with open(os.path.join(score_dir, "score.py"), "w") as f:
        f.write(code + "\n\n" + t["test"] + f"\n\ncheck({t['entry_point']})\n")
    cmd = ["python3", "score.py"]
    if shutil.which("bwrap"):
        cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--tmpfs", "/tmp", "--proc", "/proc",
               "--dev", "/dev", "--bind", score_dir, score_dir, "--chdir", score_dir] + cmd
    try:
        s = subprocess.run(cmd, cwd=score_dir, capture_output=True, text=True, timeout=30)
        passed = s.returncode == 0
    except subprocess.TimeoutExpired:
        passed = False
    db = sqlite3.connect(os.path.join(ws, ".docsmith", "docsmith.db")) if os.path.exists(os.path.join(ws, ".docsmith", "docsmith.db")) else None
    calls = toks = attempts = 0
    if db:
        calls, pt, ct = db.execute("select count(*), coalesce(sum(prompt_tokens),0), coalesce(sum(completion_tokens),0) from llm_calls").fetchone()
        toks = pt + ct
        attempts = db.execute("select count(*) from attempts where n > 0").fetchone()[0]
    row = dict(task_id=t["task_id"], exit=p.returncode, hidden_test_passed=passed, wall_s=round(wall, 1), llm_calls=calls,
               tokens=toks, attempts=attempts, status=outcome.get("status"))
    rows.append(row)
    print(json.dumps(row), flush=True)
    if p.returncode not in (0, 5):
        sys.stderr.write(p.stderr[-2000:])

n = len(rows)
print(f"hidden tests passed: {sum(r['hidden_test_passed'] for r in rows)}/{n}; accepted by the loop: {sum(r['exit'] == 0 for r in rows)}/{n}")
print(f"median wall {statistics.median(r['wall_s'] for r in rows):.1f} s; median LLM calls {statistics.median(r['llm_calls'] for r in rows)}; "
      f"median tokens {statistics.median(r['tokens'] for r in rows)}; mean attempts {statistics.mean(r['attempts'] for r in rows):.2f}")
if args.out:
    with open(args.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
