// Package azurite starts and stops the Azurite blob emulator (npm package
// azurite, installed by `make deps` under tools/azurite) for tests and for
// `batchd-dev`.
//
// Azurite is always started with --loose --skipApiVersionCheck
// --disableTelemetry: azblob sends an API version newer than Azurite accepts,
// and telemetry would leave the machine.
package azurite

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The well-known development account every Azurite instance serves.
const (
	Account = "devstoreaccount1"
	Key     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// ErrNotInstalled means the azurite-blob executable was not found.
var ErrNotInstalled = errors.New("azurite is not installed")

// Options configure Start.
type Options struct {
	// Bin is the azurite-blob executable. Empty searches
	// tools/azurite/node_modules/.bin/azurite-blob in the working directory and
	// its parents, then next to the running executable.
	Bin string
	// Dir holds Azurite's data. Empty keeps it in memory.
	Dir string
	// Port to listen on at 127.0.0.1; 0 picks a free one.
	Port int
	// StartTimeout bounds the wait for Azurite to listen (default 60 s: the
	// first start on a cold 2-core machine is slow).
	StartTimeout time.Duration
	Logger       *slog.Logger
	// CertFile and KeyFile (PEM) make Azurite serve HTTPS. Both or neither.
	CertFile, KeyFile string
	// OAuth turns on Azurite's bearer-token check (--oauth basic): it checks
	// a token's lifetime, issuer and audience, not its signature. Azurite
	// accepts bearer tokens only over HTTPS, so OAuth needs CertFile/KeyFile.
	OAuth bool
}

// Server is a running Azurite blob service.
type Server struct {
	// URL is the blob service root, http://127.0.0.1:<port> (https with
	// Options.CertFile).
	URL string

	cmd  *exec.Cmd
	done chan struct{}
	once sync.Once
	err  error
}

var listening = regexp.MustCompile(`successfully listens on (https?://[0-9.]+:([0-9]+))`)

// Start launches Azurite and waits until it listens. The process dies with
// the caller (Pdeathsig) and is killed by Close.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if (opts.CertFile == "") != (opts.KeyFile == "") {
		return nil, errors.New("azurite: CertFile and KeyFile go together")
	}
	if opts.OAuth && opts.CertFile == "" {
		return nil, errors.New("azurite: OAuth needs HTTPS (CertFile and KeyFile)")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	bin := opts.Bin
	if bin == "" {
		var err error
		if bin, err = FindBin(); err != nil {
			return nil, err
		}
	}
	if _, err := exec.LookPath("node"); err != nil {
		return nil, fmt.Errorf("azurite needs Node.js (node not on PATH): install Node.js 20 or newer, e.g. `apt-get install nodejs npm`, then run `make deps`")
	}
	args := []string{
		"--silent", "--blobHost", "127.0.0.1", "--blobPort", strconv.Itoa(opts.Port),
		"--loose", "--skipApiVersionCheck", "--disableTelemetry",
	}
	if opts.CertFile != "" {
		args = append(args, "--cert", opts.CertFile, "--key", opts.KeyFile)
	}
	if opts.OAuth {
		args = append(args, "--oauth", "basic")
	}
	if opts.Dir != "" {
		if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("azurite data dir: %w", err)
		}
		args = append(args, "--location", opts.Dir)
	} else {
		args = append(args, "--inMemoryPersistence")
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start azurite (%s): %w", bin, err)
	}
	s := &Server{cmd: cmd, done: make(chan struct{})}
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if m := listening.FindStringSubmatch(line); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
			log.Debug("azurite", "line", line)
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() {
		s.err = cmd.Wait()
		close(s.done)
	}()

	timeout := opts.StartTimeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case url := <-found:
		s.URL = url
		log.Info("azurite started", "url", url, "pid", cmd.Process.Pid)
		return s, nil
	case <-s.done:
		return nil, fmt.Errorf("azurite exited before listening: %w", s.err)
	case <-t.C:
		_ = s.Close()
		return nil, fmt.Errorf("azurite did not listen within %s", timeout)
	case <-ctx.Done():
		_ = s.Close()
		return nil, ctx.Err()
	}
}

// AccountURL is the blob endpoint of the development account, with a
// trailing slash: http://127.0.0.1:<port>/devstoreaccount1/.
func (s *Server) AccountURL() string { return s.URL + "/" + Account + "/" }

// ConnectionString is the full development-account connection string (azblob
// does not parse UseDevelopmentStorage=true).
func (s *Server) ConnectionString() string {
	proto := "http"
	if strings.HasPrefix(s.URL, "https:") {
		proto = "https"
	}
	return "DefaultEndpointsProtocol=" + proto + ";AccountName=" + Account + ";AccountKey=" + Key +
		";BlobEndpoint=" + s.URL + "/" + Account + ";"
}

// Pid is the Azurite process id.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Close kills Azurite's process group and waits for it to exit.
func (s *Server) Close() error {
	s.once.Do(func() {
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.done
		}
	})
	return nil
}

// FindBin locates tools/azurite/node_modules/.bin/azurite-blob from the
// working directory upwards, then from the running executable's directory
// upwards.
func FindBin() (string, error) {
	const rel = "tools/azurite/node_modules/.bin/azurite-blob"
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, dir := range starts {
		for {
			p := filepath.Join(dir, rel)
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", fmt.Errorf("%w: %s not found from the working directory or the executable; run `make deps` in the batchd checkout (needs Node.js and npm)", ErrNotInstalled, rel)
}
