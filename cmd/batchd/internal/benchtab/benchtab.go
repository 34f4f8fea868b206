// Package benchtab collects the figures of `make bench` (the benchmarks of
// cmd/batchd) into one report: each figure with batchd's number, the
// reference measured in the same run, their ratio and the target it is held
// to. The report prints as a table and is written as JSON.
//
// Absolute numbers on a shared machine are noise; the ratios, taken in the
// same run under the same load, are what the report is for. So every figure
// that has a reference carries it, and the machine's description and load
// average are part of the report.
package benchtab

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Figure is one measured number.
type Figure struct {
	// Group is the heading: intake, webhook, event→POST, tracking,
	// tokens, cold start.
	Group string `json:"group"`
	// Name says what was measured, with its size and conditions.
	Name string `json:"name"`
	Unit string `json:"unit"`
	// Batchd is batchd's number.
	Batchd float64 `json:"batchd"`
	// Reference is the number batchd is compared with, measured in the same
	// run (RefName says what it is); nil when the figure has none.
	Reference *float64 `json:"reference,omitempty"`
	RefName   string   `json:"reference_name,omitempty"`
	// Target is the goal in words ("ratio ≥ 0.5", "≤ 256 MiB"); Met says
	// whether this run reached it (nil: no target).
	Target string `json:"target,omitempty"`
	Met    *bool  `json:"met,omitempty"`
	// Note explains the figure or why a target was missed.
	Note string `json:"note,omitempty"`
}

// Ratio is Batchd / Reference, or NaN without a reference.
func (f Figure) Ratio() float64 {
	if f.Reference == nil || *f.Reference == 0 {
		return math.NaN()
	}
	return f.Batchd / *f.Reference
}

// Ref returns a pointer to v, for Figure.Reference.
func Ref(v float64) *float64 { return &v }

// Met returns a pointer to ok, for Figure.Met.
func Met(ok bool) *bool { return &ok }

// Slope is how a figure grows with the size of the work: the least-squares
// line through (size, value) points.
type Slope struct {
	Group string    `json:"group"`
	Name  string    `json:"name"`
	Sizes []float64 `json:"sizes"`
	// Batchd and Reference are the measured values at Sizes (Reference may
	// be empty).
	Batchd    []float64 `json:"batchd"`
	Reference []float64 `json:"reference,omitempty"`
	// PerUnit is the slope of Batchd (value per extra unit of size) in
	// PerUnitName, and RefPerUnit the reference's.
	PerUnit     float64  `json:"per_unit"`
	RefPerUnit  *float64 `json:"reference_per_unit,omitempty"`
	PerUnitName string   `json:"per_unit_name"`
}

// Machine describes where the report was measured.
type Machine struct {
	CPU        string     `json:"cpu"`
	Cores      int        `json:"cores"`
	MemoryGiB  float64    `json:"memory_gib"`
	Kernel     string     `json:"kernel"`
	GoVersion  string     `json:"go_version"`
	LoadBefore [3]float64 `json:"load_before"`
	LoadAfter  [3]float64 `json:"load_after"`
}

// Report is every figure of one run. It is safe for concurrent use.
type Report struct {
	mu       sync.Mutex
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration_ns"`
	Commit   string        `json:"commit,omitempty"`
	Machine  Machine       `json:"machine"`
	Figures  []Figure      `json:"figures"`
	Slopes   []Slope       `json:"slopes"`
}

// NewReport starts a report and describes the machine.
func NewReport(commit string) *Report {
	return &Report{Started: time.Now().UTC(), Commit: commit, Machine: Describe()}
}

// Add appends figures.
func (r *Report) Add(f ...Figure) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Figures = append(r.Figures, f...)
}

// AddSlope fits the line and appends it.
func (r *Report) AddSlope(s Slope) {
	s.PerUnit, _ = Fit(s.Sizes, s.Batchd)
	if len(s.Reference) == len(s.Sizes) && len(s.Reference) > 0 {
		k, _ := Fit(s.Sizes, s.Reference)
		s.RefPerUnit = &k
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Slopes = append(r.Slopes, s)
}

// Finish records the duration and the load average at the end.
func (r *Report) Finish() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Duration = time.Since(r.Started)
	r.Machine.LoadAfter = LoadAverage()
}

// Render prints the report as aligned text tables.
func (r *Report) Render(w io.Writer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.Machine
	fmt.Fprintf(w, "batchd benchmarks, %s (%s)\n", r.Started.Format(time.RFC3339), r.Duration.Round(time.Second))
	fmt.Fprintf(w, "machine: %s, %d cores, %.0f GiB, %s, %s; load average %.2f %.2f %.2f before, %.2f %.2f %.2f after\n\n",
		m.CPU, m.Cores, m.MemoryGiB, m.Kernel, m.GoVersion,
		m.LoadBefore[0], m.LoadBefore[1], m.LoadBefore[2], m.LoadAfter[0], m.LoadAfter[1], m.LoadAfter[2])
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "group\tfigure\tbatchd\treference\tratio\ttarget\tmet\t")
	for _, f := range r.Figures {
		ref, ratio := "-", "-"
		if f.Reference != nil {
			ref = Num(*f.Reference) + " (" + f.RefName + ")"
			if q := f.Ratio(); !math.IsNaN(q) {
				ratio = strconv.FormatFloat(q, 'f', 2, 64)
			}
		}
		met := "-"
		if f.Met != nil {
			met = map[bool]string{true: "yes", false: "NO"}[*f.Met]
		}
		target := f.Target
		if target == "" {
			target = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s %s\t%s\t%s\t%s\t%s\t\n", f.Group, f.Name, Num(f.Batchd), f.Unit, ref, ratio, target, met)
	}
	tw.Flush()
	if len(r.Slopes) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "group\tscaling\tsizes\tbatchd\treference\tbatchd slope\treference slope\t")
		for _, s := range r.Slopes {
			ref, refK := "-", "-"
			if len(s.Reference) > 0 {
				ref = nums(s.Reference)
			}
			if s.RefPerUnit != nil {
				refK = Num(*s.RefPerUnit) + " " + s.PerUnitName
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s %s\t%s\t\n", s.Group, s.Name, nums(s.Sizes), nums(s.Batchd), ref,
				Num(s.PerUnit), s.PerUnitName, refK)
		}
		tw.Flush()
	}
	notes := false
	for _, f := range r.Figures {
		if f.Note == "" {
			continue
		}
		if !notes {
			fmt.Fprintln(w, "\nnotes:")
			notes = true
		}
		fmt.Fprintf(w, "  %s / %s: %s\n", f.Group, f.Name, f.Note)
	}
}

// WriteJSON writes the report to path (its directory is created).
func (r *Report) WriteJSON(path string) error {
	r.mu.Lock()
	b, err := json.MarshalIndent(r, "", "  ")
	r.mu.Unlock()
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// MarshalJSON writes NaN-free JSON: a figure's ratio is added as a field.
func (f Figure) MarshalJSON() ([]byte, error) {
	type plain Figure
	out := struct {
		plain
		Ratio *float64 `json:"ratio,omitempty"`
	}{plain: plain(f)}
	if q := f.Ratio(); !math.IsNaN(q) {
		out.Ratio = &q
	}
	return json.Marshal(out)
}

// Num formats v with about three significant digits, without exponents.
func Num(v float64) string {
	a := math.Abs(v)
	switch {
	case math.IsNaN(v):
		return "-"
	case a >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 2, 64)
	case a >= 0.1 || a == 0:
		return strconv.FormatFloat(v, 'f', 3, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

func nums(vs []float64) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = Num(v)
	}
	return strings.Join(s, "/")
}

// Fit returns the least-squares line y = slope·x + intercept. With fewer
// than two distinct x it returns NaN.
func Fit(xs, ys []float64) (slope, intercept float64) {
	n := min(len(xs), len(ys))
	if n < 2 {
		return math.NaN(), math.NaN()
	}
	var sx, sy float64
	for i := range n {
		sx += xs[i]
		sy += ys[i]
	}
	mx, my := sx/float64(n), sy/float64(n)
	var sxx, sxy float64
	for i := range n {
		dx := xs[i] - mx
		sxx += dx * dx
		sxy += dx * (ys[i] - my)
	}
	if sxx == 0 {
		return math.NaN(), math.NaN()
	}
	slope = sxy / sxx
	return slope, my - slope*mx
}

// Percentile returns the p-th percentile (0 < p ≤ 1) of ds by the nearest
// rank; 0 for no samples. ds is not modified.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// Ms is d in milliseconds.
func Ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Describe reads the machine's description from /proc (Linux); fields it
// cannot read stay empty.
func Describe() Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), LoadBefore: LoadAverage()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.ParseFloat(f[1], 64)
				m.MemoryGiB = math.Round(kb/1024/1024*10) / 10
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	return m
}

// LoadAverage reads the 1, 5 and 15 minute load averages.
func LoadAverage() [3]float64 {
	var l [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l
	}
	f := strings.Fields(string(b))
	for i := 0; i < 3 && i < len(f); i++ {
		l[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return l
}

// ProcessMemory reads a process's resident set (VmRSS) and its peak (VmHWM),
// in MiB.
func ProcessMemory(pid int) (rss, peak float64, err error) {
	m, err := ProcessMemoryParts(pid)
	return m.RSS, m.Peak, err
}

// Memory is a process's memory from /proc/<pid>/status, in MiB: resident
// (VmRSS) and its anonymous (RssAnon: the Go heap, stacks) and file-backed
// (RssFile: the binary, mapped files such as the run index) parts, and the
// peak (VmHWM).
type Memory struct {
	RSS, Anon, File, Peak float64
}

// ProcessMemoryParts reads pid's Memory.
func ProcessMemoryParts(pid int) (Memory, error) {
	var m Memory
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return m, fmt.Errorf("read process status: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			m.RSS = kb / 1024
		case "RssAnon:":
			m.Anon = kb / 1024
		case "RssFile:":
			m.File = kb / 1024
		case "VmHWM:":
			m.Peak = kb / 1024
		}
	}
	return m, nil
}
