-- Login ids are unique regardless of case: "Alice" cannot sign up next to "alice" (a look-alike
-- account). Login ids are ASCII, so lower() folds them the same on every back end. A database
-- that already holds two ids differing only in case stops this migration; rename one first.
CREATE UNIQUE INDEX users_login_id_folded ON users (lower(login_id));
