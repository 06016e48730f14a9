package registry

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// Staged chunks (docs/architecture.md, "Provisioning: staged chunks"): StageChunks writes a manifest's
// validated rows as records of many rows each — one row of the operation's table provision_chunks_<no>
// per record, a compact encoding in one bytea — so that Postgres stores a few hundred rows per million
// devices and keeps no per-device index for staging. A batch decodes the records it covers and writes
// devices with a binary COPY built straight from them.

// chunkTablePrefix starts the name of an operation's own table of staged chunks (migration 024).
const chunkTablePrefix = "provision_chunks_"

// chunkFormat is the first byte of every record: the encoding below, so that a later one can be told apart.
const chunkFormat = 1

// Row kinds in a record.
const (
	chunkValid   = 0 // a row that becomes a device: its COPY fields follow
	chunkInvalid = 1 // a row reported as invalid: its id and the reason follow
)

// chunkEncoder encodes staged rows into one record: after the format byte, per row its line (uvarint) and
// kind, then for a valid row the five device fields exactly as a binary COPY tuple carries them (int32
// length and bytes, -1 for NULL: id text, secret1_hash bytea, cert_fingerprint bytea, cert_not_after
// timestamptz, tags jsonb), and for an
// invalid row its id and reason (uvarint length and bytes). A row's sequence number is the record's first
// plus its position. Secrets never appear: only their digests, as in every staged row.
type chunkEncoder struct {
	buf  []byte
	rows int
}

func (e *chunkEncoder) reset() {
	e.buf = append(e.buf[:0], chunkFormat)
	e.rows = 0
}

// add appends row, validated as stagedValues validates a row.
func (e *chunkEncoder) add(row StagedRow) {
	row.ParseError = stagedProblem(row)
	e.rows++
	e.buf = binary.AppendUvarint(e.buf, uint64(row.Line))
	if row.ParseError != "" {
		e.buf = append(e.buf, chunkInvalid)
		e.buf = appendString(e.buf, row.ID)
		e.buf = appendString(e.buf, row.ParseError)
		return
	}
	e.buf = append(e.buf, chunkValid)
	e.buf = appendField(e.buf, []byte(row.ID))
	e.buf = appendField(e.buf, row.SecretHash)
	e.buf = appendField(e.buf, row.CertFingerprint)
	e.buf = appendTimestamptz(e.buf, row.CertNotAfter)
	// jsonb's binary input is a version byte and the document's text.
	e.buf = binary.BigEndian.AppendUint32(e.buf, uint32(len(row.Tags)+1))
	e.buf = append(e.buf, 1)
	e.buf = append(e.buf, row.Tags...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// pgEpoch is where Postgres' binary timestamps count from.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// appendTimestamptz appends t as a binary COPY timestamptz field (microseconds since pgEpoch); nil is NULL.
func appendTimestamptz(b []byte, t *time.Time) []byte {
	if t == nil {
		return binary.BigEndian.AppendUint32(b, 0xFFFFFFFF)
	}
	b = binary.BigEndian.AppendUint32(b, 8)
	return binary.BigEndian.AppendUint64(b, uint64(t.Sub(pgEpoch).Microseconds()))
}

// appendField appends v as a binary COPY field; nil is NULL.
func appendField(b []byte, v []byte) []byte {
	if v == nil {
		return binary.BigEndian.AppendUint32(b, 0xFFFFFFFF)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
	return append(b, v...)
}

// chunkRow is one decoded row of a record. fields is a valid row's chunkFields COPY fields, a slice of the record.
type chunkRow struct {
	seq, line  int64
	fields     []byte
	id, reason string // an invalid row's
}

// chunkFields is the number of COPY fields of a valid row in a record; a tuple adds provisioned_by.
const chunkFields = 5

// errBadChunk is a record that does not decode: written by nothing this registry knows.
var errBadChunk = errors.New("malformed staged chunk")

// decodeChunk appends the rows of record data, whose first row has sequence number first, with seq in
// [from, to) to rows.
func decodeChunk(rows []chunkRow, first int64, data []byte, from, to int64) ([]chunkRow, error) {
	if len(data) == 0 || data[0] != chunkFormat {
		return rows, errBadChunk
	}
	p := data[1:]
	for seq := first; len(p) > 0; seq++ {
		line, n := binary.Uvarint(p)
		if n <= 0 || len(p) < n+1 {
			return rows, errBadChunk
		}
		kind := p[n]
		p = p[n+1:]
		r := chunkRow{seq: seq, line: int64(line)}
		switch kind {
		case chunkValid:
			size := 0
			for range chunkFields {
				if len(p) < size+4 {
					return rows, errBadChunk
				}
				l := binary.BigEndian.Uint32(p[size:])
				size += 4
				if l != 0xFFFFFFFF {
					size += int(l)
				}
			}
			if len(p) < size {
				return rows, errBadChunk
			}
			r.fields, p = p[:size:size], p[size:]
		case chunkInvalid:
			var ok bool
			if r.id, p, ok = readString(p); !ok {
				return rows, errBadChunk
			}
			if r.reason, p, ok = readString(p); !ok {
				return rows, errBadChunk
			}
		default:
			return rows, errBadChunk
		}
		if seq >= from && seq < to {
			rows = append(rows, r)
		}
	}
	return rows, nil
}

func readString(p []byte) (string, []byte, bool) {
	l, n := binary.Uvarint(p)
	if n <= 0 || uint64(len(p)-n) < l {
		return "", p, false
	}
	return string(p[n : n+int(l)]), p[n+int(l):], true
}

// staged turns a decoded row back into the StagedRow it was made from (for the row-by-row classification).
func (r chunkRow) staged() StagedRow {
	s := StagedRow{Seq: r.seq, Line: r.line, ID: r.id, ParseError: r.reason}
	if r.fields == nil {
		return s
	}
	var f [chunkFields][]byte
	p := r.fields
	for i := range f {
		l := binary.BigEndian.Uint32(p)
		p = p[4:]
		if l != 0xFFFFFFFF {
			f[i], p = p[:l:l], p[l:]
		}
	}
	s.ID, s.SecretHash, s.CertFingerprint = string(f[0]), f[1], f[2]
	if len(f[3]) == 8 {
		t := pgEpoch.Add(time.Duration(int64(binary.BigEndian.Uint64(f[3]))) * time.Microsecond)
		s.CertNotAfter = &t
	}
	if len(f[4]) > 0 {
		s.Tags = string(f[4][1:]) // after jsonb's version byte
	}
	return s
}

// createChunkTable creates operation no's own table of staged chunks in tx and records its name. Unlogged
// (a crash empties it, which the batches detect), without autovacuum (appended to, read by first, dropped
// whole), and its records stored out of line uncompressed: compressing a few MB per record would cost the
// staging more CPU than it saves on an unlogged table.
func createChunkTable(ctx context.Context, tx pgx.Tx, no int64) (string, error) {
	name := fmt.Sprintf("%s%d", chunkTablePrefix, no)
	table := pgx.Identifier{name}.Sanitize()
	_, err := tx.Exec(ctx, `CREATE UNLOGGED TABLE `+table+` (
		first bigint PRIMARY KEY,
		rows  int    NOT NULL,
		data  bytea  NOT NULL
	) WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false)`)
	if err == nil {
		_, err = tx.Exec(ctx, `ALTER TABLE `+table+` ALTER COLUMN data SET STORAGE EXTERNAL`)
	}
	if err == nil {
		_, err = tx.Exec(ctx, "UPDATE operations SET staging_table = $2 WHERE no = $1", no, name)
	}
	if err != nil {
		return "", fmt.Errorf("create staging table: %w", err)
	}
	return table, nil
}

// readChunkRows decodes the staged rows of st (a chunk table) with seq in [first, last), in order. A table
// that is gone reads as no rows: the caller compares the count with what it expects.
func readChunkRows(ctx context.Context, tx pgx.Tx, st staging, first, last int64) ([]chunkRow, error) {
	rows, err := tx.Query(ctx, `SELECT first, data FROM `+st.table+` WHERE first < $2 AND first + rows > $1 ORDER BY first`, first, last)
	if err != nil {
		if isUndefinedTable(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("read staged chunks: %w", err)
	}
	defer rows.Close()
	out := make([]chunkRow, 0, last-first)
	for rows.Next() {
		var from int64
		var data []byte
		if err := rows.Scan(&from, &data); err != nil {
			return nil, fmt.Errorf("read staged chunks: %w", err)
		}
		if out, err = decodeChunk(out, from, data, first, last); err != nil {
			return nil, fmt.Errorf("read staged chunk %d of %s: %w", from, st.table, err)
		}
	}
	if err := rows.Err(); err != nil {
		if isUndefinedTable(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("read staged chunks: %w", err)
	}
	return out, nil
}

// binaryCopyHeader starts a binary COPY stream: the signature, no flags, no header extension.
var binaryCopyHeader = []byte("PGCOPY\n\xff\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00")

// provisionChunkBatch is provisionBatch for an operation staged in chunks: the batch's rows are decoded from
// their records, and the valid ones become devices in one binary COPY built from the records' own bytes
// (Postgres' multi-row insert, with no text to parse but the tags). If any row conflicts with an existing
// device, the savepoint undoes it and the batch is classified row by row as every batch is.
func provisionChunkBatch(ctx context.Context, tx pgx.Tx, st staging, op string, first, last int64, validity time.Duration,
	out *fleet.ProvisionCounts) error {
	rows, err := readChunkRows(ctx, tx, st, first, last)
	if err != nil {
		return err
	}
	if want := last - first; int64(len(rows)) != want {
		return fmt.Errorf("%w: expected %d staged rows for %s %d-%d, found %d (did the database restart? re-run the manifest; existing devices are kept)",
			fleet.ErrStagingLost, want, op, first, last-1, len(rows))
	}
	var c fleet.ProvisionCounts
	var lines []int64
	var ids, reasons []string
	valid := 0
	buf := relayBuffers.Get().(*bytes.Buffer)
	defer func() { buf.Reset(); relayBuffers.Put(buf) }()
	buf.Write(binaryCopyHeader)
	var opField []byte
	opField = appendField(opField, []byte(op))
	for _, r := range rows {
		if r.fields == nil {
			lines, ids, reasons = append(lines, r.line), append(ids, r.id), append(reasons, r.reason)
			continue
		}
		valid++
		buf.Write([]byte{0, chunkFields + 1})
		buf.Write(r.fields)
		buf.Write(opField)
	}
	buf.Write([]byte{0xFF, 0xFF})
	c.Invalid = int64(len(lines))

	if _, err := tx.Exec(ctx, "SAVEPOINT in_database"); err != nil {
		return fmt.Errorf("create devices: %w", err)
	}
	ok := true
	if valid > 0 {
		tag, err := tx.Conn().PgConn().CopyFrom(ctx, buf,
			`COPY devices (id, secret1_hash, cert_fingerprint, cert_not_after, tags, provisioned_by) FROM STDIN (FORMAT binary)`)
		ok = err == nil && tag.RowsAffected() == int64(valid)
		c.Created = tag.RowsAffected()
	}
	if ok && len(lines) > 0 {
		_, err := tx.Exec(ctx, `INSERT INTO provision_results (op, line, id, outcome, reason)
			SELECT $1, l, i, 'invalid', r FROM unnest($2::bigint[], $3::text[], $4::text[]) AS x(l, i, r)
			ON CONFLICT (op, line) DO NOTHING`, op, lines, ids, reasons)
		ok = err == nil
	}
	if !ok {
		if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT in_database"); err != nil {
			return fmt.Errorf("create devices: %w", err)
		}
		staged := make([]StagedRow, len(rows))
		for i, r := range rows {
			staged[i] = r.staged()
		}
		if err := classifyBatch(ctx, tx, op, first, last, staged, out); err != nil {
			return err
		}
	} else {
		*out = c
		if _, err := tx.Exec(ctx, `INSERT INTO provision_batches (op, first, created, existing, invalid)
			VALUES ($1, $2, $3, $4, $5)`, op, first, out.Created, out.Existing, out.Invalid); err != nil {
			return fmt.Errorf("record batch: %w", err)
		}
	}
	if validity > 0 && out.Created > 0 {
		// Only the batch's own new devices that have no expiry yet: a device that existed keeps its own.
		ids := make([]string, 0, valid)
		for _, r := range rows {
			if r.fields != nil {
				ids = append(ids, r.staged().ID)
			}
		}
		// A certificate's recorded end caps it (least ignores a NULL), as for rows staged one by one.
		_, err := tx.Exec(ctx, `UPDATE devices SET credential_expires_at = least(created_at + make_interval(secs => $3), cert_not_after)
			WHERE id = ANY($1) AND provisioned_by = $2 AND credential_expires_at IS NULL`, ids, op, validity.Seconds())
		if err != nil {
			return fmt.Errorf("set credential expiry: %w", err)
		}
	}
	return nil
}

// isChunkTable reports whether a staging table's name is that of a table of staged chunks.
func isChunkTable(name string) bool { return strings.HasPrefix(name, chunkTablePrefix) }
