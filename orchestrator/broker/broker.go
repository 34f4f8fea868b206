// Package broker gives batchd its NATS connection: an embedded nats-server
// with JetStream in the state directory when no URL is configured, or a
// connection to an existing cluster when one is.
//
// The embedded server listens on no TCP port unless asked to (Options.Listen):
// batchd talks to it in-process. It is loopback-only when it does listen.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
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
		srv, err := startEmbedded(opts, log)
		if err != nil {
			return nil, err
		}
		b.srv = srv
		connOpts = append(connOpts, nats.InProcessServer(srv))
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

func startEmbedded(opts Options, log *slog.Logger) (*server.Server, error) {
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
		// The in-process connection needs no auth; a listener is loopback only.
		Host: "127.0.0.1",
		Port: server.RANDOM_PORT,
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
