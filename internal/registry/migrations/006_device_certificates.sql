-- +goose Up
-- Device certificates (docs/architecture.md, "Device certificates"): a device may authenticate with a client
-- certificate signed by the fleet CA instead of a secret. The registry keeps only the certificate's SHA-256
-- fingerprint (its DER encoding's), staged by the CLI like a secret's digest; the private key never leaves
-- the credentials file the CLI wrote. A device may hold a fingerprint, secrets, or both.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS cert_fingerprint bytea;
ALTER TABLE provision_rows ADD COLUMN IF NOT EXISTS cert_fingerprint bytea;

-- A changed or cleared fingerprint is announced like a changed secret, so every gateway drops its cached
-- record and re-checks the device's live session.
DROP TRIGGER IF EXISTS devices_auth_changed ON devices;
CREATE TRIGGER devices_auth_changed
    AFTER UPDATE OF status, secret1_hash, secret2_hash, cert_fingerprint ON devices
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.secret1_hash IS DISTINCT FROM NEW.secret1_hash
          OR OLD.secret2_hash IS DISTINCT FROM NEW.secret2_hash
          OR OLD.cert_fingerprint IS DISTINCT FROM NEW.cert_fingerprint)
    EXECUTE FUNCTION fleetflow_notify_device();
