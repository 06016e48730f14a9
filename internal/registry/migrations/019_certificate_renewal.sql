-- +goose Up
-- Certificate renewal (docs/architecture.md, "Certificate renewal"): a certificate device has two
-- certificate slots, as a secret device has two secret slots. cert_fingerprint is slot 1 (the certificate it
-- was provisioned with), cert2_fingerprint slot 2. A renewal writes the new certificate's fingerprint into
-- the slot the device does not use, delivers the certificate, waits until the device has connected with it
-- (the gateway records a certificate session's fingerprint as auth_digest, auth_slot 0), then clears the
-- other slot. cert_not_after and cert2_not_after are the slots' certificates' ends, known for the
-- certificates renewals signed (provisioning recorded none).
ALTER TABLE devices ADD COLUMN IF NOT EXISTS cert2_fingerprint bytea;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS cert_not_after timestamptz;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS cert2_not_after timestamptz;

-- Whether a rotation's target is renewing a certificate (true) or a secret: the slot in cred_slot is then a
-- certificate slot.
ALTER TABLE job_devices ADD COLUMN IF NOT EXISTS cred_cert boolean NOT NULL DEFAULT false;

-- The second fingerprint is announced like the first, so that every gateway drops its cached record and
-- re-checks the device's live session when a slot changes.
DROP TRIGGER IF EXISTS devices_auth_changed ON devices;
CREATE TRIGGER devices_auth_changed
    AFTER UPDATE OF status, secret1_hash, secret2_hash, cert_fingerprint, cert2_fingerprint, credential_expires_at ON devices
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.secret1_hash IS DISTINCT FROM NEW.secret1_hash
          OR OLD.secret2_hash IS DISTINCT FROM NEW.secret2_hash
          OR OLD.cert_fingerprint IS DISTINCT FROM NEW.cert_fingerprint
          OR OLD.cert2_fingerprint IS DISTINCT FROM NEW.cert2_fingerprint
          OR OLD.credential_expires_at IS DISTINCT FROM NEW.credential_expires_at)
    EXECUTE FUNCTION fleetflow_notify_device();

-- +goose Down
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
ALTER TABLE job_devices DROP COLUMN IF EXISTS cred_cert;
ALTER TABLE devices DROP COLUMN IF EXISTS cert2_not_after;
ALTER TABLE devices DROP COLUMN IF EXISTS cert_not_after;
ALTER TABLE devices DROP COLUMN IF EXISTS cert2_fingerprint;
