-- +goose Up
-- Credential rotation (docs/architecture.md, "Credential rotation"). A device has two secret slots; a
-- rotation writes the new secret's digest into the slot the device does not use, delivers the secret, waits
-- until the device has connected with it, then clears the other slot. The gateway records, with each
-- session it opens, which slot the device authenticated with and that slot's digest as it was then
-- (auth_digest): a connect counts for a rotation only when auth_digest equals the slot's digest now, so a
-- connect with a secret that a retried rotation step has since replaced never clears the old slot.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS auth_slot smallint;   -- 1 or 2: the secret slot of the newest session; 0: a certificate
ALTER TABLE devices ADD COLUMN IF NOT EXISTS auth_digest bytea;    -- the digest that session authenticated with

-- The slot a rotation wrote the device's new digest into, so that a retried step reuses it.
ALTER TABLE job_devices ADD COLUMN IF NOT EXISTS cred_slot smallint;

ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check
    CHECK (kind IN ('set_desired', 'set_tags', 'method', 'retire', 'rotate_credentials'));

-- Gateways cache the expiry with the digests and refuse an expired credential at CONNECT; a changed expiry
-- is announced like a changed secret so that no gateway keeps using the old one.
DROP TRIGGER IF EXISTS devices_auth_changed ON devices;
CREATE TRIGGER devices_auth_changed
    AFTER UPDATE OF status, secret1_hash, secret2_hash, cert_fingerprint, credential_expires_at ON devices
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.secret1_hash IS DISTINCT FROM NEW.secret1_hash
          OR OLD.secret2_hash IS DISTINCT FROM NEW.secret2_hash
          OR OLD.cert_fingerprint IS DISTINCT FROM NEW.cert_fingerprint
          OR OLD.credential_expires_at IS DISTINCT FROM NEW.credential_expires_at)
    EXECUTE FUNCTION fleetflow_notify_device();

-- +goose Down
DROP TRIGGER IF EXISTS devices_auth_changed ON devices;
CREATE TRIGGER devices_auth_changed
    AFTER UPDATE OF status, secret1_hash, secret2_hash, cert_fingerprint ON devices
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.secret1_hash IS DISTINCT FROM NEW.secret1_hash
          OR OLD.secret2_hash IS DISTINCT FROM NEW.secret2_hash
          OR OLD.cert_fingerprint IS DISTINCT FROM NEW.cert_fingerprint)
    EXECUTE FUNCTION fleetflow_notify_device();
DELETE FROM job_devices WHERE job_id IN (SELECT id FROM jobs WHERE kind = 'rotate_credentials');
DELETE FROM jobs WHERE kind = 'rotate_credentials';
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('set_desired', 'set_tags', 'method', 'retire'));
ALTER TABLE job_devices DROP COLUMN IF EXISTS cred_slot;
ALTER TABLE devices DROP COLUMN IF EXISTS auth_digest;
ALTER TABLE devices DROP COLUMN IF EXISTS auth_slot;
