package benchtab

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestFit(t *testing.T) {
	tests := []struct {
		name             string
		xs, ys           []float64
		slope, intercept float64
	}{
		{"exact line", []float64{10, 30, 100}, []float64{25, 65, 205}, 2, 5},
		{"flat", []float64{1, 2, 3}, []float64{7, 7, 7}, 0, 7},
		{"noisy", []float64{0, 1, 2, 3}, []float64{0, 2, 2, 4}, 1.2, 0.2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, c := Fit(tt.xs, tt.ys)
			if math.Abs(k-tt.slope) > 1e-9 || math.Abs(c-tt.intercept) > 1e-9 {
				t.Errorf("Fit = %v, %v; want %v, %v", k, c, tt.slope, tt.intercept)
			}
		})
	}
	for _, bad := range [][2][]float64{{{1}, {1}}, {{2, 2}, {1, 3}}, {nil, nil}} {
		if k, _ := Fit(bad[0], bad[1]); !math.IsNaN(k) {
			t.Errorf("Fit(%v, %v) slope = %v, want NaN", bad[0], bad[1], k)
		}
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	tests := []struct {
		p    float64
		want time.Duration
	}{
		{0.5, 50 * time.Millisecond},
		{0.99, 99 * time.Millisecond},
		{1, 100 * time.Millisecond},
		{0.001, time.Millisecond},
	}
	for _, tt := range tests {
		if got := Percentile(ds, tt.p); got != tt.want {
			t.Errorf("Percentile(p=%v) = %v, want %v", tt.p, got, tt.want)
		}
	}
	if ds[0] != 100*time.Millisecond {
		t.Errorf("Percentile sorted its input")
	}
	if got := Percentile(nil, 0.5); got != 0 {
		t.Errorf("Percentile(nil) = %v, want 0", got)
	}
}

func TestNum(t *testing.T) {
	tests := []struct {
		v    float64
		want string
	}{
		{12345.6, "12346"}, {123.45, "123.5"}, {12.345, "12.35"}, {1.2345, "1.234"}, {0, "0.000"},
		{0.0123, "0.0123"}, {math.NaN(), "-"},
	}
	for _, tt := range tests {
		if got := Num(tt.v); got != tt.want {
			t.Errorf("Num(%v) = %q, want %q", tt.v, got, tt.want)
		}
	}
}

// The table names every figure with its numbers and ratio, and the JSON
// holds the same figures with the ratio added (no NaN, which JSON cannot
// carry).
func TestReportRenderAndJSON(t *testing.T) {
	r := NewReport("abc123")
	r.Add(Figure{Group: "intake", Name: "Emit, 10k events", Unit: "events/s", Batchd: 5000, Reference: Ref(8000), RefName: "raw publish",
		Target: "ratio ≥ 0.5", Met: Met(true)})
	r.Add(Figure{Group: "tracking", Name: "RSS at 100k jobs", Unit: "MiB", Batchd: 300, Target: "≤ 256 MiB", Met: Met(false),
		Note: "the tracker index holds a summary per run"})
	r.AddSlope(Slope{Group: "intake", Name: "time per event", Sizes: []float64{1, 2, 3}, Batchd: []float64{2, 4, 6},
		Reference: []float64{1, 2, 3}, PerUnitName: "s/event"})
	r.Finish()

	var out bytes.Buffer
	r.Render(&out)
	for _, want := range []string{"Emit, 10k events", "5000 events/s", "8000 (raw publish)", "0.62", "yes", "NO",
		"RSS at 100k jobs", "2.000 s/event", "1.000 s/event", "the tracker index holds a summary per run"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}

	path := filepath.Join(t.TempDir(), "sub", "bench.json")
	if err := r.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Commit  string
		Figures []struct {
			Name  string
			Ratio *float64
			Met   *bool
		}
		Slopes []struct {
			PerUnit          float64  `json:"per_unit"`
			ReferencePerUnit *float64 `json:"reference_per_unit"`
		}
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("report JSON: %v\n%s", err, b)
	}
	if got.Commit != "abc123" || len(got.Figures) != 2 || len(got.Slopes) != 1 {
		t.Fatalf("report JSON = %+v, want commit abc123, 2 figures, 1 slope", got)
	}
	if got.Figures[0].Ratio == nil || math.Abs(*got.Figures[0].Ratio-0.625) > 1e-9 {
		t.Errorf("figure 0 ratio = %v, want 0.625", got.Figures[0].Ratio)
	}
	if got.Figures[1].Ratio != nil {
		t.Errorf("figure without a reference has ratio %v, want none", *got.Figures[1].Ratio)
	}
	if diff := cmp.Diff([]float64{2, 1}, []float64{got.Slopes[0].PerUnit, *got.Slopes[0].ReferencePerUnit}); diff != "" {
		t.Errorf("slopes (-want +got):\n%s", diff)
	}
}

func TestProcessMemory(t *testing.T) {
	rss, peak, err := ProcessMemory(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if rss <= 0 || peak < rss {
		t.Errorf("ProcessMemory(self) = rss %v, peak %v; want 0 < rss <= peak", rss, peak)
	}
	if _, _, err := ProcessMemory(-1); err == nil {
		t.Errorf("ProcessMemory(-1) = nil error, want one")
	}
}
