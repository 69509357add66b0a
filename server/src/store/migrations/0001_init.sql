-- docsmith schema v1. Timestamps are unix milliseconds; booleans are 0/1.
-- Applied once by store::migrate inside a transaction; never edit a released
-- migration: add 0002_*.sql instead.

CREATE TABLE tasks (
    id            INTEGER PRIMARY KEY,
    created_ms    INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL,
    workspace     TEXT    NOT NULL,
    file          TEXT    NOT NULL,
    function      TEXT    NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('generate', 'refine', 'bench')),
    status        TEXT    NOT NULL CHECK (status IN ('running', 'awaiting_answer', 'awaiting_review',
                      'accepted', 'rejected', 'discarded', 'failed', 'cancelled', 'interrupted')),
    status_reason TEXT,
    stub_source   TEXT    NOT NULL,
    docstring     TEXT,
    plan_json     TEXT,
    final_code    TEXT,
    proposal_dir  TEXT,
    wall_ms       INTEGER
);
CREATE INDEX tasks_status ON tasks (status);
CREATE INDEX tasks_created ON tasks (created_ms);

CREATE TABLE clarifications (
    id           INTEGER PRIMARY KEY,
    task         INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    question     TEXT    NOT NULL,
    options_json TEXT    NOT NULL,
    answer       TEXT    NOT NULL,
    assumed      INTEGER NOT NULL CHECK (assumed IN (0, 1)),
    created_ms   INTEGER NOT NULL
);
CREATE INDEX clarifications_task ON clarifications (task);

CREATE TABLE test_cases (
    id                 INTEGER PRIMARY KEY,
    task               INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    test_id            TEXT    NOT NULL,
    origin             TEXT    NOT NULL CHECK (origin IN ('docstring', 'generated')),
    call               TEXT    NOT NULL,
    expected           TEXT    NOT NULL,
    raises             TEXT,
    note               TEXT    NOT NULL DEFAULT '',
    dropped            INTEGER NOT NULL DEFAULT 0 CHECK (dropped IN (0, 1)),
    drop_reason        TEXT,
    dropped_at_attempt INTEGER,
    UNIQUE (task, test_id)
);

CREATE TABLE attempts (
    id               INTEGER PRIMARY KEY,
    task             INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    n                INTEGER NOT NULL,
    code             TEXT    NOT NULL,
    started_ms       INTEGER NOT NULL,
    -- NULL until finish_attempt.
    stage_reached    TEXT,
    passed           INTEGER,
    failed           INTEGER,
    findings_errors  INTEGER,
    wall_ms          INTEGER,
    stage_times_json TEXT,
    verdict          TEXT
);
CREATE INDEX attempts_task ON attempts (task, n);

CREATE TABLE test_runs (
    id          INTEGER PRIMARY KEY,
    attempt     INTEGER NOT NULL REFERENCES attempts (id) ON DELETE CASCADE,
    isolation   TEXT    NOT NULL CHECK (isolation IN ('bwrap', 'rlimits_only')),
    wall_ms     INTEGER NOT NULL,
    killed      TEXT CHECK (killed IN ('wall_timeout', 'cancelled')),
    load_error  TEXT,
    stderr_tail TEXT    NOT NULL,
    created_ms  INTEGER NOT NULL
);
CREATE INDEX test_runs_attempt ON test_runs (attempt);

CREATE TABLE test_results (
    id          INTEGER PRIMARY KEY,
    run         INTEGER NOT NULL REFERENCES test_runs (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    test_id     TEXT    NOT NULL,
    passed      INTEGER NOT NULL CHECK (passed IN (0, 1)),
    error_type  TEXT,
    message     TEXT,
    traceback   TEXT,
    actual      TEXT,
    duration_ms INTEGER NOT NULL
);
CREATE INDEX test_results_run ON test_results (run, idx);

CREATE TABLE findings (
    id       INTEGER PRIMARY KEY,
    attempt  INTEGER NOT NULL REFERENCES attempts (id) ON DELETE CASCADE,
    phase    TEXT    NOT NULL CHECK (phase IN ('validate', 'security')),
    rule     TEXT    NOT NULL,
    severity TEXT    NOT NULL CHECK (severity IN ('info', 'warning', 'error')),
    message  TEXT    NOT NULL,
    line     INTEGER,
    tool     TEXT    NOT NULL
);
CREATE INDEX findings_attempt ON findings (attempt);

CREATE TABLE critiques (
    id         INTEGER PRIMARY KEY,
    attempt    INTEGER NOT NULL REFERENCES attempts (id) ON DELETE CASCADE,
    text       TEXT    NOT NULL,
    json       TEXT,
    created_ms INTEGER NOT NULL
);
CREATE INDEX critiques_attempt ON critiques (attempt);

CREATE TABLE feedback (
    id         INTEGER PRIMARY KEY,
    task       INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt    INTEGER REFERENCES attempts (id) ON DELETE SET NULL,
    text       TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX feedback_task ON feedback (task);

CREATE TABLE llm_calls (
    id                INTEGER PRIMARY KEY,
    task              INTEGER REFERENCES tasks (id) ON DELETE SET NULL,
    attempt           INTEGER REFERENCES attempts (id) ON DELETE SET NULL,
    role              TEXT    NOT NULL,
    provider          TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_ms        INTEGER NOT NULL,
    ok                INTEGER NOT NULL CHECK (ok IN (0, 1)),
    error             TEXT,
    created_ms        INTEGER NOT NULL
);
CREATE INDEX llm_calls_task ON llm_calls (task);
