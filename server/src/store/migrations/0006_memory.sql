-- Workspace memory (issue 15): what later tasks of this workspace are shown
-- from its past (the database is the workspace's own). One row per item:
--   'feedback': the user's feedback on a task, retrieved by relevance
--               (written by the trigger below whenever feedback is added);
--   'lesson':   feedback that states a standing preference ("use pathlib"),
--               shown to every later task until forgotten;
--   'failure':  a docstring (or user) example an earlier candidate failed and
--               what fixed it, retrieved by relevance.
-- `function` and `docstring` are the task's, indexed with the text. A bench
-- task's hidden test never reaches the store, so it cannot be remembered.
-- Forgetting deletes the row; the feedback itself stays in `feedback`.
CREATE TABLE memory (
    id         INTEGER PRIMARY KEY,
    kind       TEXT    NOT NULL CHECK (kind IN ('feedback', 'lesson', 'failure')),
    text       TEXT    NOT NULL,
    function   TEXT    NOT NULL,
    docstring  TEXT    NOT NULL DEFAULT '',
    task       INTEGER REFERENCES tasks (id) ON DELETE CASCADE,
    feedback   INTEGER REFERENCES feedback (id) ON DELETE CASCADE,
    created_ms INTEGER NOT NULL
);
CREATE INDEX memory_kind ON memory (kind);

-- Full-text index over the memory rows (an external-content FTS5 table kept
-- in step by triggers, as https://sqlite.org/fts5.html section 4.4.3 shows).
CREATE VIRTUAL TABLE memory_fts USING fts5(
    text, function, docstring, content = 'memory', content_rowid = 'id'
);
CREATE TRIGGER memory_ai AFTER INSERT ON memory BEGIN
    INSERT INTO memory_fts (rowid, text, function, docstring)
    VALUES (new.id, new.text, new.function, new.docstring);
END;
CREATE TRIGGER memory_ad AFTER DELETE ON memory BEGIN
    INSERT INTO memory_fts (memory_fts, rowid, text, function, docstring)
    VALUES ('delete', old.id, old.text, old.function, old.docstring);
END;
CREATE TRIGGER memory_au AFTER UPDATE ON memory BEGIN
    INSERT INTO memory_fts (memory_fts, rowid, text, function, docstring)
    VALUES ('delete', old.id, old.text, old.function, old.docstring);
    INSERT INTO memory_fts (rowid, text, function, docstring)
    VALUES (new.id, new.text, new.function, new.docstring);
END;

-- Every feedback row is remembered with its task's function and docstring.
CREATE TRIGGER feedback_remembered AFTER INSERT ON feedback BEGIN
    INSERT INTO memory (kind, text, function, docstring, task, feedback, created_ms)
    SELECT 'feedback', new.text, t.function, COALESCE(t.docstring, ''), new.task, new.id,
           new.created_ms
    FROM tasks t WHERE t.id = new.task;
END;

-- Feedback given before this migration.
INSERT INTO memory (kind, text, function, docstring, task, feedback, created_ms)
SELECT 'feedback', f.text, t.function, COALESCE(t.docstring, ''), f.task, f.id, f.created_ms
FROM feedback f JOIN tasks t ON t.id = f.task
ORDER BY f.id;
