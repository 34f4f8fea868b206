package main

import (
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/orchestrator"
)

// readmeDemoCommands returns the batchd commands of the README's "Two
// commands" section, as printed there (comments removed).
func readmeDemoCommands(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start := strings.Index(text, "\n## Two commands\n")
	if start < 0 {
		t.Fatal(`README.md has no "## Two commands" section`)
	}
	section := text[start+1:]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	comment := regexp.MustCompile(`\s+#\s.*$`)
	var cmds []string
	inBlock := false
	for _, line := range strings.Split(section, "\n") {
		switch {
		case strings.HasPrefix(line, "```"):
			inBlock = !inBlock
		case inBlock && (strings.HasPrefix(line, "./bin/batchd ") || strings.HasPrefix(line, "./bin/batchd-dev ")):
			cmds = append(cmds, comment.ReplaceAllString(line, ""))
		}
	}
	if len(cmds) == 0 {
		t.Fatal(`the README's "Two commands" section shows no ./bin/batchd or ./bin/batchd-dev command`)
	}
	return cmds
}

// bannerCommands returns the commands batchd-dev printed under "Try, in
// another terminal:" (comments removed).
func bannerCommands(t *testing.T, out string) []string {
	t.Helper()
	i := strings.Index(out, "Try, in another terminal:\n")
	if i < 0 {
		t.Fatalf("batchd-dev printed no commands to try:\n%s", out)
	}
	var cmds []string
	for _, line := range strings.Split(out[i:], "\n")[1:] {
		line = strings.TrimSpace(line)
		if line == "" {
			break
		}
		if !strings.HasPrefix(line, "#") {
			cmds = append(cmds, line)
		}
	}
	return cmds
}

// devWalkthrough runs, as a new user would in a second terminal of dir,
// every command of the README's "Two commands" section and of batchd-dev's
// banner, verbatim but for their placeholders (FILE, ID, …), and checks
// that each does what the text beside it says. When the README or the
// banner changes, this follows.
func devWalkthrough(t *testing.T, dir, base, banner string) {
	t.Helper()
	file := filepath.Join(dir, "walk.csv")
	if err := os.WriteFile(file, []byte("id,x\n1,2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sample := regexp.MustCompile(`http://127\.0\.0\.1:\d+/devstoreaccount1/incoming/`).FindString(banner)
	if sample == "" {
		t.Fatalf("the banner shows no Azurite URL:\n%s", banner)
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
	idRE := regexp.MustCompile(`\b[0-9a-f]{32}\b`)
	var lastID string
	run := func(line string) (string, int) {
		t.Helper()
		line = strings.ReplaceAll(line, "FILE", "walk.csv")
		line = strings.ReplaceAll(line, "…", sample+"walk.csv")
		line = strings.ReplaceAll(line, " ID", " "+lastID)
		c := exec.Command("bash", "-c", line)
		c.Dir, c.Env = dir, env
		b, err := c.CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		t.Logf("$ %s\n%s(exit %d)", line, b, code)
		if id := idRE.FindString(string(b)); id != "" && strings.Contains(line, "batchd-dev upload ") {
			lastID = id
		}
		return string(b), code
	}
	// check runs line and applies what the text beside it promises.
	check := func(line string) {
		t.Helper()
		out, code := run(line)
		fail := func(want string) { t.Errorf("%s: exit %d, want %s; output:\n%s", line, code, want, out) }
		// ends wants exit 0 and a run id in the output, and waits for that
		// run to end in state; it returns the id ("" when failed).
		ends := func(state orchestrator.State) string {
			id := idRE.FindString(out)
			if code != 0 || id == "" {
				fail("0 and a run id")
				return ""
			}
			devWaitState(t, base, id, state)
			return id
		}
		switch {
		case strings.HasPrefix(line, "export "):
			k, v, _ := strings.Cut(strings.TrimPrefix(line, "export "), "=")
			env = append(env, k+"="+v)
		case strings.Contains(line, "batchd-dev upload ") && strings.Contains(line, "fail"):
			// "a name containing fail makes a job that fails"
			ends(orchestrator.StateFailed)
		case strings.Contains(line, "batchd-dev upload "):
			// "a new file in incoming/ makes a run"
			ends(orchestrator.StateCompleted)
		case strings.Contains(line, "batchd-dev publish ") && strings.Contains(line, "elsewhere"):
			// "a URI outside the pipeline's allow-list is rejected, with the reason"
			id := ends(orchestrator.StateRejected)
			if id == "" {
				return
			}
			if r, err := procGetRun(base, id); err != nil || !strings.Contains(r.Error+r.History[len(r.History)-1].Reason, "allow-list") {
				t.Errorf("%s: the run %s is rejected without the allow-list reason (%v)", line, id, err)
			}
		case strings.Contains(line, "batchd-dev publish "):
			// "a NATS message makes a run"
			if code != 0 || !idRE.MatchString(out) {
				fail("0 and a run id")
			}
		case strings.HasPrefix(line, "nats "):
			t.Fatalf("nats lines are not run: %s", line)
		case strings.Contains(line, "pipelines run nightly --wait"):
			if code != 0 || !strings.Contains(out, "completed") {
				fail("0 and completed")
			}
		case strings.Contains(line, "runs list") || strings.Contains(line, "runs show"):
			if code != 0 || !strings.Contains(out, "uploads") {
				fail("0 and the runs of the uploads pipeline")
			}
			if strings.Contains(line, "runs show") && !strings.Contains(out, lastID[:12]) {
				fail("the run " + lastID)
			}
		default:
			t.Errorf("the walkthrough does not know what %q should do: teach it", line)
		}
	}

	// The README's commands use the default address unless BATCHD_URL is
	// set, as the banner says to when batchd-dev listens elsewhere.
	env = append(env, "BATCHD_URL="+base)
	for _, line := range readmeDemoCommands(t) {
		check(line)
	}
	env = env[:2]
	for _, line := range bannerCommands(t, banner) {
		if strings.HasPrefix(line, "nats ") {
			if _, err := exec.LookPath("nats"); err != nil {
				t.Logf("skipping %q: the nats CLI is not installed (the banner says: if you have it)", line)
				continue
			}
			if _, code := run(line); code != 0 {
				t.Errorf("%s: exit %d", line, code)
			}
			continue
		}
		check(line)
	}

	// And the status page the banner points to.
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `data-run-id="`+lastID+`"`) {
		t.Errorf("GET / = %d; want 200 and the status page with the run %s:\n%.600s", resp.StatusCode, lastID, body)
	}
}

// devWaitState waits until run id is in state.
func devWaitState(t *testing.T, base, id string, state orchestrator.State) {
	t.Helper()
	var last orchestrator.State
	devWaitFor(t, 30*time.Second, "run "+id+" to be "+string(state), func() {}, func() bool {
		r, err := procGetRun(base, id)
		if err == nil {
			last = r.State
		}
		return last == state
	})
}
