package registry

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
)

// A record gives back every row it was made from, valid or not, and a record cut anywhere is refused rather
// than read as fewer rows (a batch would then report the missing rows as lost, never create half a record).
func TestChunkRecordRoundTripsAndRefusesTruncation(t *testing.T) {
	end := time.Date(2027, 12, 6, 15, 4, 5, 123456000, time.UTC) // a certificate's end, to the microsecond
	rows := []StagedRow{
		{Seq: 10, Line: 12, ID: "dev-a", Tags: `{"region":"eu","note":"a\tb"}`, SecretHash: creds.Digest("s-a")},
		{Seq: 11, Line: 13, ID: "Bad ID", Tags: `{}`, SecretHash: creds.Digest("s-b")},
		{Seq: 12, Line: 400, ID: "dev-c", Tags: `{}`, CertFingerprint: creds.Digest("cert-c"), CertNotAfter: &end},
		{Seq: 13, Line: 401, ParseError: "expected 3 fields, found 2"},
	}
	var e chunkEncoder
	e.reset()
	for _, r := range rows {
		e.add(r)
	}
	require.Equal(t, len(rows), e.rows)
	got, err := decodeChunk(nil, 10, e.buf, 0, 100)
	require.NoError(t, err)
	require.Len(t, got, len(rows))
	for i, r := range got {
		s := r.staged()
		require.Equal(t, rows[i].Seq, s.Seq)
		require.Equal(t, rows[i].Line, s.Line)
		require.Equal(t, rows[i].ID, s.ID)
		if i == 0 || i == 2 {
			require.Empty(t, s.ParseError)
			require.Equal(t, rows[i].Tags, s.Tags)
			require.Equal(t, rows[i].SecretHash, s.SecretHash)
			require.Equal(t, rows[i].CertFingerprint, s.CertFingerprint)
			if rows[i].CertNotAfter == nil {
				require.Nil(t, s.CertNotAfter)
			} else {
				require.NotNil(t, s.CertNotAfter)
				require.True(t, rows[i].CertNotAfter.Equal(*s.CertNotAfter), "%s != %s", rows[i].CertNotAfter, s.CertNotAfter)
			}
		}
	}
	require.Contains(t, got[1].staged().ParseError, "invalid device id")
	require.Equal(t, "expected 3 fields, found 2", got[3].staged().ParseError)

	part, err := decodeChunk(nil, 10, e.buf, 11, 13)
	require.NoError(t, err)
	require.Len(t, part, 2)
	require.Equal(t, []int64{11, 12}, []int64{part[0].seq, part[1].seq})

	// Every cut that ends inside a row, and a record of another format.
	ends := map[int]bool{1: true}
	for i := range rows {
		var prefix chunkEncoder
		prefix.reset()
		for _, r := range rows[:i+1] {
			prefix.add(r)
		}
		ends[len(prefix.buf)] = true
	}
	for cut := 0; cut < len(e.buf); cut++ {
		if ends[cut] {
			continue // a record of fewer whole rows
		}
		_, err := decodeChunk(nil, 10, e.buf[:cut], 0, 100)
		require.True(t, errors.Is(err, errBadChunk), "cut at %d of %d: %v", cut, len(e.buf), err)
	}
	other := append([]byte{chunkFormat + 1}, e.buf[1:]...)
	_, err = decodeChunk(nil, 10, other, 0, 100)
	require.ErrorIs(t, err, errBadChunk)
}
