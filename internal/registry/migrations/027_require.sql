-- +goose Up
-- fleetflow_require fails the statement, and with it the transaction, when ok is false: a check inside a
-- batch that runs as one implicit transaction (one round trip, no lock held while the client waits), where
-- the client cannot look at a result before the next statement runs. The registry recognises the failure by
-- its SQLSTATE, FF001, and its message (docs/architecture.md, "Ingest lanes").
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION fleetflow_require(ok boolean, what text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION USING ERRCODE = 'FF001', MESSAGE = what;
    END IF;
    RETURN true;
END $$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION IF EXISTS fleetflow_require(boolean, text);
