-- +goose Up
-- Session numbers come from Postgres, not from a gateway's clock: with several gateways a device moving from
-- one to another must get a larger number there, or the registry ("newest session wins") would ignore its
-- ConnUp. Gateways used to number sessions with unix microseconds, so the sequence starts above every number
-- already stored and above now in microseconds: numbers keep increasing across the upgrade, even while an
-- old gateway is still running.
CREATE SEQUENCE IF NOT EXISTS device_session_seq AS bigint;

SELECT setval('device_session_seq',
    greatest((SELECT coalesce(max(session), 0) FROM devices),
             (extract(epoch FROM clock_timestamp()) * 1e6)::bigint) + 1,
    false);

