// Package broker gives batchd its NATS connection: an embedded nats-server
// with JetStream in the state directory when no URL is configured, or a
// connection to an existing cluster when one is.
//
// The embedded server listens on no TCP port unless asked to (Options.Listen):
// batchd talks to it in-process. It is loopback-only when it does listen.
package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Options configure Start.
type Options struct {
	// URL of an existing NATS cluster. Empty starts the embedded server.
	URL string
	// StoreDir is the embedded server's JetStream directory. Required when URL
	// is empty.
	StoreDir string
	// Listen, for the embedded server only, is a loopback host:port to accept
	// clients on (port 0 picks a free one). Empty means no listener.
	Listen string
	// ListenTokenFile, with Listen, holds the token every client of the
	// embedded server must present (the in-process connection too), so
	// that another local user cannot write the ledger through the
	// listener. Start creates it (random, mode 0600) when it is missing.
	// Empty means no authentication: tests only; batchd serve always sets
	// it.
	ListenTokenFile string
	// CredsFile, NKeyFile and the TLS files authenticate to an external
	// cluster; they are passed to nats.go as they are.
	CredsFile  string
	NKeyFile   string
	TLSCAFile  string
	TLSCert    string
	TLSKey     string
	ClientName string
	// NoSync, for the embedded server only, keeps nats-server's default
	// file-store sync (every 2 minutes) instead of syncing every write
	// before it is acknowledged. Only make bench sets it, to show what the
	// sync costs; batchd never does: an acknowledgement must survive a
	// power loss.
	NoSync bool
	// ReadyTimeout bounds the wait for the embedded server (default 10 s).
	ReadyTimeout time.Duration
	Logger       *slog.Logger
}

// Broker is a live NATS connection with JetStream, and the embedded server
// behind it when there is one.
type Broker struct {
	Conn *nats.Conn
	JS   jetstream.JetStream

	srv *server.Server
	log *slog.Logger
}

// Start connects (and, with an empty URL, first starts the embedded server).
// The caller must Close the Broker.
func Start(ctx context.Context, opts Options) (*Broker, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Broker{log: log}
	connOpts := []nats.Option{
		nats.Name(orDefault(opts.ClientName, "batchd")),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "url", c.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			log.Warn("nats async error", "subject", subj, "err", err)
		}),
	}
	url := opts.URL
	if url == "" {
		token, err := listenToken(opts)
		if err != nil {
			return nil, err
		}
		srv, err := startEmbedded(opts, token, log)
		if err != nil {
			return nil, err
		}
		b.srv = srv
		connOpts = append(connOpts, nats.InProcessServer(srv))
		if token != "" {
			connOpts = append(connOpts, nats.Token(token))
		}
	} else {
		if opts.CredsFile != "" {
			connOpts = append(connOpts, nats.UserCredentials(opts.CredsFile))
		}
		if opts.NKeyFile != "" {
			o, err := nats.NkeyOptionFromSeed(opts.NKeyFile)
			if err != nil {
				return nil, fmt.Errorf("nats nkey %s: %w", opts.NKeyFile, err)
			}
			connOpts = append(connOpts, o)
		}
		if opts.TLSCAFile != "" {
			connOpts = append(connOpts, nats.RootCAs(opts.TLSCAFile))
		}
		if opts.TLSCert != "" || opts.TLSKey != "" {
			connOpts = append(connOpts, nats.ClientCert(opts.TLSCert, opts.TLSKey))
		}
		// An external cluster may be restarting while batchd starts.
		connOpts = append(connOpts, nats.RetryOnFailedConnect(true))
	}
	nc, err := nats.Connect(url, connOpts...)
	if err != nil {
		b.shutdownServer()
		return nil, fmt.Errorf("nats connect: %w", err)
	}
	b.Conn = nc
	if opts.URL != "" {
		if err := waitConnected(ctx, nc, cmpDur(opts.ReadyTimeout, 30*time.Second)); err != nil {
			b.Close()
			return nil, err
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	b.JS = js
	return b, nil
}

// ClientURL is the embedded server's client URL when it listens, or the
// connected URL of an external cluster. Empty for an embedded server without
// a listener.
func (b *Broker) ClientURL() string {
	if b.srv != nil {
		if b.srv.Addr() == nil {
			return ""
		}
		return b.srv.ClientURL()
	}
	return b.Conn.ConnectedUrlRedacted()
}

// Embedded reports whether batchd runs the server itself.
func (b *Broker) Embedded() bool { return b.srv != nil }

// Ready reports whether the connection is up.
func (b *Broker) Ready() error {
	if b.Conn == nil || !b.Conn.IsConnected() {
		return errors.New("nats not connected")
	}
	return nil
}

// Close drains nothing: callers stop their consumers first. It closes the
// connection and then shuts the embedded server down and waits for it.
func (b *Broker) Close() {
	if b.Conn != nil {
		b.Conn.Close()
	}
	b.shutdownServer()
}

// SyncsBeforeAck reports whether the embedded server syncs every write
// to disk before acknowledging it (false for an external cluster, whose
// durability is its replicas').
func (b *Broker) SyncsBeforeAck() bool {
	return b.srv != nil && b.srv.JetStreamConfig() != nil && b.srv.JetStreamConfig().SyncAlways
}

func (b *Broker) shutdownServer() {
	if b.srv != nil {
		b.srv.Shutdown()
		b.srv.WaitForShutdown()
	}
}

// listenToken reads (or creates) the listener's token; "" without one.
func listenToken(opts Options) (string, error) {
	if opts.Listen == "" || opts.ListenTokenFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(opts.ListenTokenFile)
	if err == nil {
		if tok := strings.TrimSpace(string(b)); len(tok) >= 32 {
			return tok, nil
		}
		return "", fmt.Errorf("embedded nats: %s holds no token of at least 32 characters: delete it to have a new one made", opts.ListenTokenFile)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("embedded nats: listener token: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(raw)
	f, err := os.OpenFile(opts.ListenTokenFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("embedded nats: create the listener token: %w", err)
	}
	if _, err := f.WriteString(tok + "\n"); err != nil {
		_ = f.Close()
		return "", fmt.Errorf("embedded nats: write the listener token: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("embedded nats: write the listener token: %w", err)
	}
	return tok, nil
}

func startEmbedded(opts Options, token string, log *slog.Logger) (*server.Server, error) {
	if opts.StoreDir == "" {
		return nil, errors.New("embedded nats: a state directory is required")
	}
	sopts := &server.Options{
		ServerName: "batchd",
		JetStream:  true,
		StoreDir:   opts.StoreDir,
		NoSigs:     true,
		DontListen: true,
		// Acknowledged means on disk: with SyncAlways the file store
		// fsyncs each message block write (and writes its consumer and
		// stream state files with O_SYNC) before the write returns, and
		// a stream answers a publish (PubAck), a KV put and a consumer ack
		// only after its store write returned. The default syncs every 2
		// minutes, so a host crash could lose what Event Grid already got
		// a 200 for.
		SyncAlways: !opts.NoSync,
		// Without a listener only the in-process connection reaches the
		// server; a listener is loopback only and, in batchd serve, needs
		// the token.
		Authorization: token,
		Host:          "127.0.0.1",
		Port:          server.RANDOM_PORT,
	}
	if opts.Listen != "" {
		host, port, err := net.SplitHostPort(opts.Listen)
		if err != nil {
			return nil, fmt.Errorf("embedded nats listen %q: %w", opts.Listen, err)
		}
		ip := net.ParseIP(host)
		if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return nil, fmt.Errorf("embedded nats listen %q: only loopback addresses are allowed; use an external NATS cluster to serve other hosts", opts.Listen)
		}
		p, err := strconv.Atoi(port)
		if err != nil || p < 0 || p > 65535 {
			return nil, fmt.Errorf("embedded nats listen %q: bad port", opts.Listen)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		sopts.DontListen = false
		sopts.Host = host
		sopts.Port = p
	}
	srv, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	srv.SetLoggerV2(&natsLog{log: log.With("component", "nats-server")}, false, false, false)
	go srv.Start()
	if !srv.ReadyForConnections(cmpDur(opts.ReadyTimeout, 10*time.Second)) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("embedded nats: not ready after %s (state dir %s)", cmpDur(opts.ReadyTimeout, 10*time.Second), opts.StoreDir)
	}
	return srv, nil
}

func waitConnected(ctx context.Context, nc *nats.Conn, d time.Duration) error {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !nc.IsConnected() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("nats: not connected to %s after %s", nc.Opts.Url, d)
		case <-tick.C:
		}
	}
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func cmpDur(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// natsLog sends nats-server's log lines to slog. Debug and trace are off.
type natsLog struct{ log *slog.Logger }

func (l *natsLog) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *natsLog) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l *natsLog) Fatalf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *natsLog) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *natsLog) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *natsLog) Tracef(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
