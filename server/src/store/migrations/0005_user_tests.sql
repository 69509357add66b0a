-- Feedback becomes a test (issue 15): a test case may come from the user
-- (origin 'user'), ground truth like a docstring example. SQLite cannot
-- change a CHECK constraint in place, so the table is rebuilt with the same
-- columns and rows (no table references test_cases' rows).
CREATE TABLE test_cases_v5 (
    id                 INTEGER PRIMARY KEY,
    task               INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    test_id            TEXT    NOT NULL,
    origin             TEXT    NOT NULL CHECK (origin IN ('docstring', 'generated', 'user')),
    call               TEXT    NOT NULL,
    expected           TEXT    NOT NULL,
    raises             TEXT,
    note               TEXT    NOT NULL DEFAULT '',
    dropped            INTEGER NOT NULL DEFAULT 0 CHECK (dropped IN (0, 1)),
    drop_reason        TEXT,
    dropped_at_attempt INTEGER,
    options            TEXT    NOT NULL DEFAULT '',
    UNIQUE (task, test_id)
);
INSERT INTO test_cases_v5 (id, task, test_id, origin, call, expected, raises, note,
                           dropped, drop_reason, dropped_at_attempt, options)
SELECT id, task, test_id, origin, call, expected, raises, note,
       dropped, drop_reason, dropped_at_attempt, options
FROM test_cases;
DROP TABLE test_cases;
ALTER TABLE test_cases_v5 RENAME TO test_cases;
