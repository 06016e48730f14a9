package report

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/fleetflow/fleetflow/internal/health"
)

// Widths of the terminal layout, chosen so that the charts fit 100 columns.
const (
	barWidth      = 40 // cells of the longest bar
	labelWidth    = 24 // runes of a chart label before it is cut
	progressWidth = 20 // cells of an operation's progress bar
)

// eighths are the partial blocks that give bars a resolution of 1/8 of a cell.
var eighths = []string{"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"}

// sparks are the levels of a sparkline, lowest first.
var sparks = []rune("▁▂▃▄▅▆▇█")

// TimeFormat is how the report writes times.
const TimeFormat = "2006-01-02 15:04:05 MST"

// BuildText writes the report for a terminal: the devices by status and connection, the firmware versions
// and open alerts as bar charts, the operations in flight with progress bars and the health trend as
// sparklines over a table.
func BuildText(w io.Writer, d Data) error {
	bw := bufio.NewWriter(w)
	p := func(format string, a ...any) { fmt.Fprintf(bw, format, a...) }
	th := Thousands
	loc := d.At.Location()

	p("FLEET REPORT  %s\n\n", d.At.Format(TimeFormat))

	dev := d.Devices
	if dev.Total == 0 {
		p("DEVICES  none registered\n\n")
	} else {
		live := dev.Online + dev.Offline
		sw := maxLen(dev.Active, dev.Disabled, dev.Retired)
		cw := maxLen(dev.Online, dev.Offline)
		p("DEVICES  %s registered\n", th(dev.Total))
		p("  active    %*s    online   %*s  %5.1f%%\n", sw, th(dev.Active), cw, th(dev.Online), percent(dev.Online, live))
		p("  disabled  %*s    offline  %*s  %5.1f%%\n", sw, th(dev.Disabled), cw, th(dev.Offline), percent(dev.Offline, live))
		p("  retired   %*s\n", sw, th(dev.Retired))
		p("  (online and offline count the devices not retired)\n\n")
	}

	fw := FirmwareBars(d.Firmware)
	if len(fw) == 0 {
		p("FIRMWARE  no devices\n\n")
	} else {
		total := sum(fw)
		p("FIRMWARE  %s devices not retired, %d %s\n", th(total), len(d.Firmware), plural(len(d.Firmware), "version", "versions"))
		writeBars(bw, fw, total)
		p("\n")
	}

	alerts := alertBars(d.Alerts)
	p("OPEN ALERTS  %s\n", th(sum(alerts)))
	writeBars(bw, alerts, -1)
	p("\n")

	if len(d.Groups) > 0 {
		// Only when groups exist: a fleet without groups reads as before (docs/architecture.md, "Groups").
		p("GROUPS  %d\n", len(d.Groups))
		writeBars(bw, groupBars(d.Groups), -1)
		p("\n")
	}

	switch {
	case d.OperationsError != "":
		p("OPERATIONS IN FLIGHT  unavailable: %s\n\n", Clean(d.OperationsError, 1000))
	case len(d.Operations) == 0:
		p("OPERATIONS IN FLIGHT  none\n\n")
	default:
		more := ""
		if d.OperationsMore {
			more = " (and more; see the Temporal UI)"
		}
		p("OPERATIONS IN FLIGHT  %d%s\n", len(d.Operations), more)
		tw := tabwriter.NewWriter(bw, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  ID\tOP\tSTATE\tSTAGE\tSTARTED\tPROGRESS")
		for _, o := range d.Operations {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", Clean(o.ID, 48), Clean(o.Op, 16), dash(Clean(o.State, 20)),
				dash(Clean(o.Stage, 24)), o.StartedAt.In(loc).Format("01-02 15:04"), progressText(o))
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
		p("\n")
	}

	if len(d.HealthRules) > 0 {
		// Only when rules exist: a fleet without them reads as before (docs/architecture.md, "Health rules").
		p("HEALTH RULES  %d\n", len(d.HealthRules))
		tw := tabwriter.NewWriter(bw, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  RULE\tTARGET\tLAST CHECK\tDEVICES\tOFFLINE\tUNHEALTHY\tPENDING\tFIRMWARE\tCREDS\tOPEN")
		for _, r := range d.HealthRules {
			target := r.Query
			if r.Group != "" {
				target = "group " + r.Group
			}
			if l := r.LastRun; l != nil {
				s := l.Summary
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", Clean(r.Name, 64), Clean(target, 48),
					l.StartedAt.In(loc).Format("2006-01-02 15:04"), th(s.Devices), th(s.Problems[health.KindOffline]),
					th(s.Problems[health.KindUnhealthy]), th(s.Problems[health.KindDesiredPending]),
					th(s.Problems[health.KindFirmwareNoncompliant]), th(s.Problems[health.KindCredentialExpiring]), th(s.Open))
			} else {
				fmt.Fprintf(tw, "  %s\t%s\tnever\t-\t-\t-\t-\t-\t-\t-\n", Clean(r.Name, 64), Clean(target, 48))
			}
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
		p("\n")
	}

	if len(d.Health) == 0 {
		p("HEALTH TREND  no health check has run yet\n")
	} else {
		p("HEALTH TREND  last %d %s\n", len(d.Health), plural(len(d.Health), "check", "checks"))
		for _, t := range HealthTrends(d.Health) {
			lo, hi := minMax(t.Values)
			p("  %-12s %s  %s → %s  (min %s, max %s)\n", t.Name, Sparkline(t.Values),
				th(t.Values[0]), th(t.Values[len(t.Values)-1]), th(lo), th(hi))
		}
		p("\n")
		var on, off, open []int64
		for _, h := range d.Health {
			on, off, open = append(on, h.Summary.Online), append(off, h.Summary.Offline), append(open, h.Summary.Open)
		}
		ow, fw, aw := max(6, maxLen(on...)), max(7, maxLen(off...)), max(11, maxLen(open...))
		p("  %-16s  %*s  %*s  %*s\n", "CHECKED AT", ow, "ONLINE", fw, "OFFLINE", aw, "OPEN ALERTS")
		for _, h := range d.Health {
			p("  %-16s  %*s  %*s  %*s\n", h.StartedAt.In(loc).Format("2006-01-02 15:04"),
				ow, th(h.Summary.Online), fw, th(h.Summary.Offline), aw, th(h.Summary.Open))
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// writeBars draws one line per bar: label, bar scaled to the largest value, count and, when total >= 0,
// the share of total.
func writeBars(w io.Writer, bars []Bar, total int64) {
	lw := 0
	labels := make([]string, len(bars))
	nw := 0
	for i, b := range bars {
		labels[i] = Clean(b.Label, labelWidth)
		lw = max(lw, utf8.RuneCountInString(labels[i]))
		nw = max(nw, len(Thousands(b.Value)))
	}
	top := maxValue(bars)
	for i, b := range bars {
		fmt.Fprintf(w, "  %s  %s  %*s", pad(labels[i], lw), pad(BarCells(b.Value, top, barWidth), barWidth), nw, Thousands(b.Value))
		if total >= 0 {
			fmt.Fprintf(w, "  %5.1f%%", percent(b.Value, total))
		}
		fmt.Fprintln(w)
	}
}

// BarCells draws value as a bar of at most width cells, where top fills all of them. Any value above zero
// gets at least an eighth of a cell, so that a rare version is not mistaken for none.
func BarCells(value, top int64, width int) string {
	if value <= 0 || top <= 0 {
		return ""
	}
	n := int(math.Round(float64(min(value, top)) / float64(top) * float64(width*8)))
	n = max(n, 1)
	return strings.Repeat("█", n/8) + eighths[n%8]
}

// Sparkline draws values as one block per value, from ▁ for the smallest to █ for the largest. A series
// that does not change is drawn flat at the bottom.
func Sparkline(values []int64) string {
	lo, hi := minMax(values)
	var b strings.Builder
	for _, v := range values {
		level := 0
		if hi > lo {
			level = int(math.Round(float64(v-lo) / float64(hi-lo) * float64(len(sparks)-1)))
		}
		b.WriteRune(sparks[level])
	}
	return b.String()
}

// progressText is "[███▒░░░]  30% 3,000 done, 200 failed of 10,000".
func progressText(o Operation) string {
	counts := fmt.Sprintf("%s done, %s failed", Thousands(o.Done), Thousands(o.Failed))
	if o.Total <= 0 {
		return "[" + strings.Repeat("░", progressWidth) + "]    ? " + counts
	}
	done, failed := o.Progress()
	nd := int(math.Round(done * progressWidth))
	nf := min(progressWidth-nd, int(math.Round((done+failed)*progressWidth))-nd)
	if o.Failed > 0 && nf == 0 && nd < progressWidth {
		nf = 1 // failures are what an operator looks for: never hide them in rounding
	}
	return fmt.Sprintf("[%s%s%s] %3.0f%% %s of %s", strings.Repeat("█", nd), strings.Repeat("▒", nf),
		strings.Repeat("░", progressWidth-nd-nf), (done+failed)*100, counts, Thousands(o.Total))
}

// maxLen is the width of the widest of ns as Thousands writes them.
func maxLen(ns ...int64) int {
	w := 0
	for _, n := range ns {
		w = max(w, len(Thousands(n)))
	}
	return w
}

// pad fills s with spaces to width runes.
func pad(s string, width int) string {
	return s + strings.Repeat(" ", max(0, width-utf8.RuneCountInString(s)))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func minMax(values []int64) (lo, hi int64) {
	for i, v := range values {
		if i == 0 || v < lo {
			lo = v
		}
		if i == 0 || v > hi {
			hi = v
		}
	}
	return lo, hi
}
