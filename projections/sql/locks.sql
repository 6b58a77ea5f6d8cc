-- Advisory locks: one active follower per name across processes, one rebuild at a time.

-- name: try_lock
SELECT pg_try_advisory_lock($1, $2);

-- name: unlock
SELECT pg_advisory_unlock($1, $2);

-- name: held_locks
-- The advisory locks (namespace, id) some session of this database holds.
SELECT classid::bigint AS classid, objid::bigint AS objid
FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 2 AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database());
