-- Real code (issue 12): a docstring example's doctest option flags
-- (ELLIPSIS, NORMALIZE_WHITESPACE, comma-separated), and the context the
-- model was given with the stub (python::context::Context as JSON: which
-- names, from where, how many tokens).
ALTER TABLE test_cases ADD COLUMN options TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN context_json TEXT;
