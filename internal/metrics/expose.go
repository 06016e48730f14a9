package metrics

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// ContentType is the media type of the text exposition format this package writes.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// WriteTo writes every family that has at least one series in the text exposition format: families sorted by
// name, series by their labels, so that consecutive scrapes diff cleanly.
func (r *Registry) WriteTo(w io.Writer) (int64, error) {
	r.mu.RLock()
	fams := make([]*family, 0, len(r.families))
	for _, f := range r.families {
		fams = append(fams, f)
	}
	r.mu.RUnlock()
	slices.SortFunc(fams, func(a, b *family) int { return strings.Compare(a.name, b.name) })

	cw := &countingWriter{w: bufio.NewWriter(w)}
	var line []byte
	for _, f := range fams {
		f.mu.RLock()
		keys := make([]string, 0, len(f.series))
		for k := range f.series {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		ss := make([]*series, len(keys))
		for i, k := range keys {
			ss[i] = f.series[k]
		}
		f.mu.RUnlock()
		if len(ss) == 0 {
			continue
		}
		line = append(line[:0], "# HELP "...)
		line = append(line, f.name...)
		line = append(line, ' ')
		line = appendEscaped(line, f.help, false)
		line = append(line, "\n# TYPE "...)
		line = append(line, f.name...)
		line = append(line, ' ')
		line = append(line, f.kind.String()...)
		line = append(line, '\n')
		for _, s := range ss {
			switch m := s.metric.(type) {
			case *Counter:
				line = appendSample(line, f.name, "", s.labels, "", m.Value())
			case *Gauge:
				line = appendSample(line, f.name, "", s.labels, "", m.Value())
			case valueFunc:
				line = appendSample(line, f.name, "", s.labels, "", m())
			case *Histogram:
				cum, sum := m.snapshot()
				for i, n := range cum {
					le := "+Inf"
					if i < len(m.upper) {
						le = string(appendFloat(nil, m.upper[i]))
					}
					line = appendSample(line, f.name, "_bucket", s.labels, le, float64(n))
				}
				line = appendSample(line, f.name, "_sum", s.labels, "", sum)
				line = appendSample(line, f.name, "_count", s.labels, "", float64(cum[len(cum)-1]))
			}
			if len(line) > 32<<10 {
				if _, err := cw.Write(line); err != nil {
					return cw.n, err
				}
				line = line[:0]
			}
		}
		if _, err := cw.Write(line); err != nil {
			return cw.n, err
		}
		line = line[:0]
	}
	err := cw.w.Flush()
	return cw.n, err
}

// appendSample appends one sample line: name+suffix, the labels (plus le for histogram buckets) and value.
func appendSample(b []byte, name, suffix string, labels []labelPair, le string, v float64) []byte {
	b = append(b, name...)
	b = append(b, suffix...)
	if len(labels) > 0 || le != "" {
		b = append(b, '{')
		for i, l := range labels {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, l.name...)
			b = append(b, `="`...)
			b = appendEscaped(b, l.value, true)
			b = append(b, '"')
		}
		if le != "" {
			if len(labels) > 0 {
				b = append(b, ',')
			}
			b = append(b, `le="`...)
			b = append(b, le...)
			b = append(b, '"')
		}
		b = append(b, '}')
	}
	b = append(b, ' ')
	b = appendFloat(b, v)
	return append(b, '\n')
}

// appendEscaped escapes a HELP text (backslash and newline) or a label value (also the double quote), as the
// text format requires.
func appendEscaped(b []byte, s string, quote bool) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '"' && quote:
			b = append(b, `\"`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// appendFloat formats a sample value: integers without exponent (counts read better as 1500000 than
// 1.5e+06), everything else in Go's shortest representation, and the special values as Prometheus spells them.
func appendFloat(b []byte, v float64) []byte {
	switch {
	case math.IsInf(v, +1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	case math.IsNaN(v):
		return append(b, "NaN"...)
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		return strconv.AppendInt(b, int64(v), 10)
	default:
		return strconv.AppendFloat(b, v, 'g', -1, 64)
	}
}

type countingWriter struct {
	w *bufio.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Handler serves the registry in the text exposition format, gzip-compressed when the scraper accepts it
// (Prometheus does; a worker's Temporal histograms make a few hundred kilobytes of text).
func (r *Registry) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		// Render first, so that a failure cannot leave a truncated body behind a 200.
		var buf bytes.Buffer
		if _, err := r.WriteTo(&buf); err != nil {
			http.Error(w, "rendering metrics: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", ContentType)
		w.Header().Add("Vary", "Accept-Encoding")
		if req.Method == http.MethodHead {
			return
		}
		if acceptsGzip(req.Header.Get("Accept-Encoding")) {
			w.Header().Set("Content-Encoding", "gzip")
			zw := gzip.NewWriter(w)
			_, _ = buf.WriteTo(zw)
			_ = zw.Close()
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
		_, _ = buf.WriteTo(w)
	})
}

// acceptsGzip reports whether an Accept-Encoding header allows gzip (and does not refuse it with q=0).
func acceptsGzip(h string) bool {
	for part := range strings.SplitSeq(h, ",") {
		enc, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(enc), "gzip") {
			q := strings.ReplaceAll(params, " ", "")
			return q != "q=0" && q != "q=0.0" && q != "q=0.00" && q != "q=0.000"
		}
	}
	return false
}

// validMetricName reports whether s matches [a-zA-Z_:][a-zA-Z0-9_:]*.
func validMetricName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(isLetter(c) || c == '_' || c == ':' || (i > 0 && isDigit(c))) {
			return false
		}
	}
	return true
}

// validLabelName reports whether s matches [a-zA-Z_][a-zA-Z0-9_]* and is not reserved (leading "__").
func validLabelName(s string) bool {
	if s == "" || strings.HasPrefix(s, "__") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(isLetter(c) || c == '_' || (i > 0 && isDigit(c))) {
			return false
		}
	}
	return true
}

// sanitizeName turns a foreign metric name (the Temporal SDK's, which may carry dots or dashes in custom
// metrics) into a valid one: invalid bytes become underscores and a leading digit gets one in front.
func sanitizeName(s string, label bool) string {
	if s == "" {
		return "_"
	}
	b := []byte(s)
	for i, c := range b {
		if !(isLetter(c) || isDigit(c) || c == '_' || (c == ':' && !label)) {
			b[i] = '_'
		}
	}
	if isDigit(b[0]) {
		b = append([]byte{'_'}, b...)
	}
	if label && strings.HasPrefix(string(b), "__") {
		b = append([]byte("x"), b...)
	}
	return string(b)
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isDigit(c byte) bool  { return c >= '0' && c <= '9' }
