-- Console sessions signed out before they expired (api/console/session.py): a cookie is its own
-- record, so signing out must be remembered here for every process that serves the console.

-- name: console_revoke
-- Session $1 is signed out; kept until $2, when its cookie would be refused anyway. Entries past
-- that are dropped on the way (the table holds at most a few hours of sign-outs).
WITH expired AS (
    DELETE FROM public.console_revocations WHERE expires_at < now()
)
INSERT INTO public.console_revocations (session_id, expires_at)
VALUES ($1, $2)
ON CONFLICT ON CONSTRAINT console_revocations_pkey DO NOTHING;

-- name: console_revoked
SELECT EXISTS (SELECT 1 FROM public.console_revocations WHERE session_id = $1);
