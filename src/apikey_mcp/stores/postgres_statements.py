"""The statements only PostgreSQL can say: a reservation, and a settle or release, each in one statement
(data-modifying CTEs, one round trip), the UTC day of a timestamp, and inserts that report whether they inserted.
"""

from .statements import POLICY_COLUMNS

DAY = "to_char(to_timestamp(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
REPORT_KEYS = {"principal": "principal", "model": "coalesce(model, '-')", "day": DAY}

# A reservation in one statement, one round trip: the conditional UPDATE decides; the reservation and its
# audit line are inserted only from the row it returned. It holds only while the principal's period is current
# at the server's time (the starts of the day, week and month then are passed in): when a new one is due, no
# row comes back and `reserve` renews the period first, in a transaction (once per period).
RESERVE = """
WITH held AS (
    UPDATE apikey_principals SET reserved = reserved + %(c)s
    WHERE name = %(p)s AND spent + reserved + %(c)s <= budget AND period_start >=
        CASE period WHEN 'day' THEN %(day)s WHEN 'week' THEN %(week)s WHEN 'month' THEN %(month)s ELSE 0 END
    RETURNING name, budget, spent, reserved, period_start),
made AS (
    INSERT INTO apikey_reservations (id, principal, credits, purpose, own_key, state, created_at, modality, model,
                                     gateway, period_start)
    SELECT %(id)s, name, %(c)s, %(purpose)s, %(own)s, 'reserved', %(t)s, %(modality)s, %(model)s, %(gateway)s,
           period_start
    FROM held RETURNING id)
INSERT INTO apikey_events (at, principal, kind, actor, reservation_id, credits, budget, spent, reserved, detail,
                           model)
SELECT %(t)s, name, 'reserve', %(actor)s, %(id)s, %(c)s, budget, spent, reserved, %(purpose)s, %(model)s FROM held
RETURNING (SELECT period_start FROM held)
"""
# Settle or release exactly once: only while the reservation is open, moving its credits in the same statement.
# The charge counts in the period the reservation was made in: not in the current one if that has renewed since.
# A charge above the hold adds an `overcharge` line (its credits: the excess) after the settle's.
CLOSE = """
WITH closed AS (
    UPDATE apikey_reservations SET state = %(s)s, charged = %(ch)s, closed_at = %(t)s
    WHERE id = %(id)s AND state = 'reserved' RETURNING principal, credits, model, period_start),
moved AS (
    UPDATE apikey_principals p SET reserved = p.reserved - closed.credits,
        spent = p.spent + CASE WHEN p.period_start = closed.period_start THEN %(ch)s ELSE 0 END
    FROM closed WHERE p.name = closed.principal
    RETURNING p.name, p.budget, p.spent, p.reserved, closed.credits AS held, closed.model,
        CASE WHEN p.period_start = closed.period_start THEN NULL
        ELSE 'period ' || to_char(to_timestamp(closed.period_start) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
        END AS detail)
INSERT INTO apikey_events (at, principal, kind, actor, reservation_id, credits, budget, spent, reserved, detail, model)
SELECT %(t)s, name, %(kind)s, coalesce(%(actor)s, 'principal:' || name), %(id)s, %(ch)s, budget, spent, reserved,
       detail, model
FROM moved
UNION ALL
SELECT %(t)s, name, 'overcharge', coalesce(%(actor)s, 'principal:' || name), %(id)s, %(ch)s - held, budget, spent,
       reserved, 'charged ' || %(ch)s || ' credits on a hold of ' || held, model
FROM moved WHERE %(ch)s > held
RETURNING seq
"""
# The operator's reason for a close, on the lines the close wrote (before a settle's period note).
CLOSE_REASON = """
UPDATE apikey_events SET detail = CASE WHEN kind = 'overcharge' THEN detail || ': ' || %(why)s
    WHEN detail IS NULL THEN %(why)s ELSE %(why)s || '; ' || detail END
WHERE seq = ANY(%(seqs)s)
"""
ADD_PRINCIPAL = (
    f"INSERT INTO apikey_principals (name, budget, period_start, {POLICY_COLUMNS})"
    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)
CLAIM_ALERT = "INSERT INTO apikey_alerts VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING threshold"
SIGHT_SIGNATURE = "INSERT INTO apikey_callbacks VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING signature"
