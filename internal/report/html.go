package report

import (
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/fleetflow/fleetflow/internal/health"
)

//go:embed report.html.tmpl
var htmlSource string

// page is parsed once; html/template escapes every value for its context, which matters because firmware
// versions are chosen by devices, not by us.
var page = template.Must(template.New("report").Parse(htmlSource))

// Geometry of the SVG charts, in CSS pixels.
const (
	chartLabelW = 190 // label column of the bar charts
	chartBarW   = 460 // longest bar
	chartValueW = 130 // count and share after the bar
	chartRowH   = 22
	trendW      = 780
	trendH      = 130
	trendPadL   = 80 // room for the y-axis labels
	trendPadR   = 20
	trendPadT   = 34 // room for the series' name above the plot
	trendPadB   = 28 // room for the time labels below it
	progressW   = 160
	progressH   = 12
)

// HTML writes the report as one self-contained page that a browser opens offline: inline CSS, inline SVG
// charts, system fonts, no scripts and nothing fetched. Every number a chart draws is also in the page as
// text (a data-value attribute and a <title> tooltip on the shape, and a table), for screen readers, for
// copying and for tests.
func HTML(w io.Writer, d Data) error {
	if err := page.Execute(w, newView(d)); err != nil {
		return fmt.Errorf("write html report: %w", err)
	}
	return nil
}

// view is Data laid out for the template: every coordinate is computed here, so the template only places
// strings.
type view struct {
	Title, Time, ISOTime string
	Devices              []tile
	Firmware             barChart
	Alerts               barChart
	AlertsTotal          string
	Groups               *barChart // nil when the fleet has no groups
	Ops                  []opRow
	OpsMore              bool
	OpsError             string
	Trends               []trendChart
	Runs                 []runRow
	Rules                []ruleRow // health rules with their latest check; none: no section
}

// ruleRow is a health rule with its latest check's counts ("-" before its first check).
type ruleRow struct {
	Name, Target, Time, ISOTime                                 string
	Devices, Offline, Unhealthy, Pending, Firmware, Creds, Open string
}

// tile is one number of the devices section.
type tile struct{ Key, Label, Value, Note string }

// barChart is a horizontal bar chart: a row per bar, label, bar, count and share.
type barChart struct {
	Name          string
	Width, Height int
	BarX          int
	Bars          []barShape
	Empty         bool
	EmptyText     string
}

// barShape is one bar; Value is the raw number (data-value), Count the same for people.
type barShape struct {
	Label, FullLabel, Value, Count, Share, Tooltip string
	Y, TextY, BarW, ValueX                         string
	Other                                          bool
}

// opRow is one operation in flight with its progress bar's geometry.
type opRow struct {
	ID, Type, Op, State, Stage, Started      string
	Total, Done, Failed, Percent             string
	DoneW, FailedX, FailedW, ProgressTooltip string
	RawTotal, RawDone, RawFailed             int64
	HasTotal                                 bool
	ProgressWidth, ProgressHeight            int
}

// trendChart is one series of the health trend as a line chart with labelled axes.
type trendChart struct {
	Name, Class   string
	Width, Height int
	Points        string // polyline
	Dots          []trendDot
	AxisMax       string
	AxisMaxY      string
	AxisMin       string
	AxisMinY      string
	BaseY         string
	PlotX0        string
	PlotX1        string
	FirstLabel    string
	LastLabel     string
	LabelY        string
}

// trendDot is one health check's point on a trend line.
type trendDot struct {
	X, Y, Value, ISOTime, Tooltip string
}

// runRow is one health check in the trend's table.
type runRow struct {
	ID, Time, ISOTime, Online, Offline, Open string
}

func newView(d Data) view {
	loc := d.At.Location()
	v := view{
		Title:   "Fleet report — " + d.At.Format(TimeFormat),
		Time:    d.At.Format(TimeFormat),
		ISOTime: d.At.Format(time.RFC3339),
	}
	dev := d.Devices
	live := dev.Online + dev.Offline
	v.Devices = []tile{
		{"total", "registered", Thousands(dev.Total), ""},
		{"active", "active", Thousands(dev.Active), ""},
		{"disabled", "disabled", Thousands(dev.Disabled), ""},
		{"retired", "retired", Thousands(dev.Retired), ""},
		{"online", "online", Thousands(dev.Online), fmt.Sprintf("%.1f%%", percent(dev.Online, live))},
		{"offline", "offline", Thousands(dev.Offline), fmt.Sprintf("%.1f%%", percent(dev.Offline, live))},
	}
	fw := FirmwareBars(d.Firmware)
	v.Firmware = newBarChart("firmware", fw, sum(fw), "device", "devices")
	alerts := alertBars(d.Alerts)
	v.Alerts = newBarChart("alerts", alerts, -1, "open alert", "open alerts")
	v.AlertsTotal = Thousands(sum(alerts))
	if len(d.Groups) > 0 {
		g := newBarChart("groups", groupBars(d.Groups), -1, "device", "devices")
		v.Groups = &g
	}

	v.OpsError, v.OpsMore = d.OperationsError, d.OperationsMore
	for _, o := range d.Operations {
		v.Ops = append(v.Ops, newOpRow(o, loc))
	}

	if len(d.Health) > 0 {
		times := make([]time.Time, len(d.Health))
		for i, h := range d.Health {
			times[i] = h.StartedAt.In(loc)
			v.Runs = append(v.Runs, runRow{
				ID: h.ID, Time: times[i].Format("2006-01-02 15:04"), ISOTime: times[i].Format(time.RFC3339),
				Online: Thousands(h.Summary.Online), Offline: Thousands(h.Summary.Offline), Open: Thousands(h.Summary.Open),
			})
		}
		classes := []string{"online", "offline", "alerts"}
		for i, t := range HealthTrends(d.Health) {
			v.Trends = append(v.Trends, newTrendChart(t, classes[i], times))
		}
	}
	for _, r := range d.HealthRules {
		row := ruleRow{Name: r.Name, Target: r.Query, Devices: "-", Offline: "-", Unhealthy: "-", Pending: "-", Firmware: "-", Creds: "-", Open: "-"}
		if r.Group != "" {
			row.Target = "group " + r.Group
		}
		if l := r.LastRun; l != nil {
			s, t := l.Summary, l.StartedAt.In(loc)
			row.Time, row.ISOTime = t.Format("2006-01-02 15:04"), t.Format(time.RFC3339)
			row.Devices, row.Open = Thousands(s.Devices), Thousands(s.Open)
			row.Offline, row.Unhealthy = Thousands(s.Problems[health.KindOffline]), Thousands(s.Problems[health.KindUnhealthy])
			row.Pending, row.Firmware = Thousands(s.Problems[health.KindDesiredPending]), Thousands(s.Problems[health.KindFirmwareNoncompliant])
			row.Creds = Thousands(s.Problems[health.KindCredentialExpiring])
		}
		v.Rules = append(v.Rules, row)
	}
	return v
}

// px formats a coordinate; one decimal is finer than a screen pixel.
func px(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) }

// newBarChart lays out bars; total >= 0 adds each bar's share of it. one and many name the unit.
func newBarChart(name string, bars []Bar, total int64, one, many string) barChart {
	c := barChart{Name: name, Width: chartLabelW + chartBarW + chartValueW, Height: max(1, len(bars)) * chartRowH,
		BarX: chartLabelW, Empty: len(bars) == 0, EmptyText: "No " + many + "."}
	top := maxValue(bars)
	for i, b := range bars {
		w := float64(b.Value) / float64(top) * chartBarW
		if b.Value > 0 {
			w = max(w, 1) // a rare version stays visible
		}
		s := barShape{
			Label:     Clean(b.Label, 28),
			FullLabel: b.Label,
			Value:     strconv.FormatInt(b.Value, 10),
			Count:     Thousands(b.Value),
			Y:         px(float64(i*chartRowH) + 3),
			TextY:     px(float64(i*chartRowH) + chartRowH*0.68),
			BarW:      px(w),
			ValueX:    px(chartLabelW + w + 6),
			Other:     b.Other,
		}
		s.Tooltip = fmt.Sprintf("%s: %s %s", b.Label, s.Count, plural(int(min(b.Value, 2)), one, many))
		if total >= 0 {
			s.Share = fmt.Sprintf("%.1f%%", percent(b.Value, total))
			s.Tooltip += " (" + s.Share + ")"
		}
		c.Bars = append(c.Bars, s)
	}
	return c
}

func newOpRow(o Operation, loc *time.Location) opRow {
	done, failed := o.Progress()
	r := opRow{
		ID: o.ID, Type: o.Type, Op: o.Op, State: dash(o.State), Stage: dash(o.Stage),
		Started: o.StartedAt.In(loc).Format("2006-01-02 15:04"),
		Total:   Thousands(o.Total), Done: Thousands(o.Done), Failed: Thousands(o.Failed),
		RawTotal: o.Total, RawDone: o.Done, RawFailed: o.Failed,
		HasTotal:      o.Total > 0,
		ProgressWidth: progressW, ProgressHeight: progressH,
		DoneW:   px(done * progressW),
		FailedX: px(done * progressW),
		FailedW: px(failed * progressW),
	}
	r.Percent = "?"
	if r.HasTotal {
		r.Percent = fmt.Sprintf("%.0f%%", (done+failed)*100)
	}
	r.ProgressTooltip = fmt.Sprintf("%s done, %s failed of %s", r.Done, r.Failed, r.Total)
	return r
}

// newTrendChart draws one series as a line over the runs. The y axis spans the series' own minimum to
// maximum, both labelled: a fleet's online count moves by a percent or two between checks, which a scale
// from zero would flatten into a straight line.
func newTrendChart(t Trend, class string, times []time.Time) trendChart {
	c := trendChart{Name: t.Name, Class: class, Width: trendW, Height: trendH}
	lo, hi := minMax(t.Values)
	x0, x1 := float64(trendPadL), float64(trendW-trendPadR)
	y0, y1 := float64(trendH-trendPadB), float64(trendPadT) // y0 is the minimum, y1 the maximum
	step := 0.0
	if len(t.Values) > 1 {
		step = (x1 - x0) / float64(len(t.Values)-1)
	}
	var pts []string
	for i, val := range t.Values {
		x := x0 + step*float64(i)
		if len(t.Values) == 1 {
			x = (x0 + x1) / 2
		}
		y := (y0 + y1) / 2 // a flat series runs through the middle
		if hi > lo {
			y = y0 - float64(val-lo)/float64(hi-lo)*(y0-y1)
		}
		pts = append(pts, px(x)+","+px(y))
		c.Dots = append(c.Dots, trendDot{
			X: px(x), Y: px(y), Value: strconv.FormatInt(val, 10), ISOTime: times[i].Format(time.RFC3339),
			Tooltip: fmt.Sprintf("%s: %s %s", times[i].Format("2006-01-02 15:04"), Thousands(val), t.Name),
		})
	}
	c.Points = strings.Join(pts, " ")
	c.AxisMax, c.AxisMaxY = Thousands(hi), px(y1+4)
	c.AxisMin, c.AxisMinY = Thousands(lo), px(y0+4)
	c.BaseY = px(y0)
	if hi == lo {
		c.AxisMin, c.AxisMax, c.AxisMinY = "", Thousands(hi), px((y0+y1)/2+4)
		c.AxisMaxY = c.AxisMinY
	}
	c.PlotX0, c.PlotX1 = px(x0), px(x1)
	c.FirstLabel, c.LastLabel = times[0].Format("01-02 15:04"), times[len(times)-1].Format("01-02 15:04")
	c.LabelY = px(trendH - 8)
	return c
}
