// Package natsnode runs a NATS server node inside a fleetflow process: the bus that carries the device channel
// between gateways, workers and the CLI (docs/architecture.md, "Scale-out: gateways over NATS"). It is the one
// adapter of github.com/nats-io/nats-server/v2; nothing else imports the server.
package natsnode

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Config describes one node. The zero value is a single node on 127.0.0.1:4222 without TLS or credentials.
type Config struct {
	// Name is the server name, unique in the cluster (default: derived from the client listen address).
	Name string
	// Listen is the client listener host:port (default 127.0.0.1:4222; port 0 picks a free one).
	Listen string
	// ClusterName names the cluster all routed nodes must share (default "fleetflow").
	ClusterName string
	// ClusterListen is the route listener host:port; empty runs a single node (port 0 picks a free one).
	ClusterListen string
	// Routes are nats://host:port URLs of other nodes' route listeners. Listing this node itself is harmless,
	// so every node of a cluster can be given the same list.
	Routes []string
	// TLSCertFile and TLSKeyFile turn on TLS for clients and routes; TLSCAFile verifies route peers (routes
	// require certificates from this CA) and is what clients are expected to trust.
	TLSCertFile, TLSKeyFile, TLSCAFile string
	// User and Password, when set, are required from clients and from route peers. Empty means no
	// authentication, which is only acceptable on loopback.
	User, Password string
	// Logger receives the server's notices, warnings and errors (default: discarded).
	Logger *slog.Logger
}

// Node is a running NATS server.
type Node struct {
	srv *server.Server
	url string
}

// readyTimeout bounds how long Start waits for the listeners; a node that cannot listen fails well before.
const readyTimeout = 10 * time.Second

// Start starts the node and returns once it accepts client connections. Routes to other nodes are solicited
// in the background (with retries), so nodes of a cluster may be started in any order.
func Start(cfg Config) (*Node, error) {
	opts, err := options(cfg)
	if err != nil {
		return nil, err
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats node %s: %w", opts.ServerName, err)
	}
	if cfg.Logger != nil {
		srv.SetLoggerV2(slogAdapter{cfg.Logger}, false, false, false)
	}
	srv.Start()
	if !srv.ReadyForConnections(readyTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("nats node %s: not listening on %s after %s", opts.ServerName, cfg.Listen, readyTimeout)
	}
	host := opts.Host
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	scheme := "nats"
	if opts.TLSConfig != nil {
		scheme = "tls"
	}
	// The server writes the port it picked back into its options.
	port := srv.Addr().(*net.TCPAddr).Port
	return &Node{srv: srv, url: scheme + "://" + net.JoinHostPort(host, strconv.Itoa(port))}, nil
}

// ClientURL is the URL clients dial (nats:// or tls://), without credentials. An unspecified listen host
// (0.0.0.0, ::) is reported as 127.0.0.1.
func (n *Node) ClientURL() string { return n.url }

// ClusterURL is the nats://host:port of the route listener, or "" for a single node; other nodes list it in
// their Routes.
func (n *Node) ClusterURL() string {
	a := n.srv.ClusterAddr()
	if a == nil {
		return ""
	}
	return "nats://" + a.String()
}

// NumPeers is the number of other nodes this node currently has routes to (a route may be pooled over
// several connections; each peer counts once). Tests wait on it for the cluster to form.
func (n *Node) NumPeers() int { return n.srv.NumRemotes() }

// Close shuts the node down and waits until it has stopped. Clients connected to it fail over to the other
// nodes of the cluster they know.
func (n *Node) Close() {
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
}

func options(cfg Config) (*server.Options, error) {
	listen := cfg.Listen
	if listen == "" {
		listen = "127.0.0.1:4222"
	}
	host, port, err := splitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("nats node listen address %q: %w", listen, err)
	}
	name := cfg.Name
	if name == "" {
		name = "fleetflow-" + listen
	}
	opts := &server.Options{
		ServerName: name,
		Host:       host,
		Port:       port,
		NoSigs:     true,
		NoLog:      cfg.Logger == nil,
		Username:   cfg.User,
		Password:   cfg.Password,
	}
	if (cfg.User == "") != (cfg.Password == "") {
		return nil, errors.New("nats node: user and password go together")
	}
	var tlsConf *tls.Config
	if cfg.TLSCertFile != "" || cfg.TLSKeyFile != "" {
		tlsConf, err = serverTLS(cfg)
		if err != nil {
			return nil, err
		}
		opts.TLSConfig = tlsConf
		opts.TLSTimeout = 5
	} else if cfg.TLSCAFile != "" {
		return nil, errors.New("nats node: a TLS CA file needs a certificate and key file")
	}
	if cfg.ClusterListen == "" {
		if len(cfg.Routes) > 0 {
			return nil, errors.New("nats node: routes need a cluster listen address")
		}
		return opts, nil
	}
	chost, cport, err := splitHostPort(cfg.ClusterListen)
	if err != nil {
		return nil, fmt.Errorf("nats node cluster listen address %q: %w", cfg.ClusterListen, err)
	}
	clusterName := cfg.ClusterName
	if clusterName == "" {
		clusterName = "fleetflow"
	}
	opts.Cluster = server.ClusterOpts{
		Name:     clusterName,
		Host:     chost,
		Port:     cport,
		Username: cfg.User,
		Password: cfg.Password,
		// Nodes are started in any order and may be restarted: keep soliciting routes.
		ConnectRetries: -1,
	}
	// A route to a node that went away is retried every second for as long as this node runs (dev up may
	// have shrunk the cluster under it): report the failure on the first attempt and then once a minute,
	// not every second as the server's default for a lost route does.
	opts.ReconnectErrorReports = routeErrorReportEvery
	if tlsConf != nil {
		rt := tlsConf.Clone()
		// A route is both a server and a client connection: peers verify each other against the CA.
		rt.ClientAuth = tls.RequireAndVerifyClientCert
		rt.RootCAs = rt.ClientCAs
		opts.Cluster.TLSConfig = rt
		opts.Cluster.TLSTimeout = 5
	}
	for _, r := range cfg.Routes {
		u, err := url.Parse(r)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("nats node route %q: not a nats://host:port URL", r)
		}
		if u.User == nil && cfg.User != "" {
			u.User = url.UserPassword(cfg.User, cfg.Password)
		}
		opts.Routes = append(opts.Routes, u)
	}
	return opts, nil
}

// routeErrorReportEvery is how many failed attempts to reach a lost route pass between two log lines (the
// server retries once a second).
const routeErrorReportEvery = 60

// splitHostPort maps port 0 to the server's "pick a random port" value (its 0 means the default port).
func splitHostPort(hp string) (string, int, error) {
	host, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

func serverTLS(cfg Config) (*tls.Config, error) {
	if cfg.TLSCertFile == "" || cfg.TLSKeyFile == "" {
		return nil, errors.New("nats node: TLS needs both a certificate and a key file")
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("nats node TLS key pair: %w", err)
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if cfg.TLSCAFile != "" {
		pem, err := os.ReadFile(cfg.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("nats node TLS CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("nats node TLS CA %s: no certificate found", cfg.TLSCAFile)
		}
		c.ClientCAs = pool
		c.RootCAs = pool
	}
	return c, nil
}

// slogAdapter feeds the server's printf-style logger into slog.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Noticef(format string, v ...any) { a.l.Info(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Warnf(format string, v ...any)   { a.l.Warn(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Fatalf(format string, v ...any)  { a.l.Error(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Errorf(format string, v ...any)  { a.l.Error(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Debugf(format string, v ...any)  { a.l.Debug(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Tracef(format string, v ...any)  { a.l.Debug(fmt.Sprintf(format, v...)) }
