package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/internal/fleet"
)

// etcdOpts are the fleet directory's flags (package fleet).
type etcdOpts struct {
	endpoints, prefix     string
	ttl, dialTimeout      time.Duration
	caCert, cert, keyFile string
}

func etcdFlags(fs *flag.FlagSet) *etcdOpts {
	o := &etcdOpts{}
	fs.StringVar(&o.endpoints, "etcd", "", "etcd client URLs (comma-separated, e.g. https://10.0.0.9:2379) of the fleet directory: this daemon registers its node id, boot id, datapath addresses and the channels it has sinks for under a lease, and learns the other daemons and their channels from etcd's watch, with no --peer; empty: static peers only")
	fs.StringVar(&o.prefix, "etcd-prefix", fleet.DefaultPrefix, "key prefix of the fleet directory in etcd (each daemon's key is PREFIX/nodes/NODE-ID); daemons sharing it are one fleet")
	fs.DurationVar(&o.ttl, "etcd-ttl", fleet.DefaultTTL, "lease TTL of this daemon's etcd key: a daemon that dies drops out of the others' peers this long after (at least 2s)")
	fs.DurationVar(&o.dialTimeout, "etcd-dial-timeout", fleet.DefaultDialTimeout, "timeout of connecting to etcd and of each request")
	fs.StringVar(&o.caCert, "etcd-cacert", "", "PEM file of the CA that signed etcd's server certificates (https endpoints); empty: the system's")
	fs.StringVar(&o.cert, "etcd-cert", "", "PEM file of the client certificate for etcd (with --etcd-key)")
	fs.StringVar(&o.keyFile, "etcd-key", "", "PEM file of the client certificate's private key for etcd")
	return o
}

// apply puts the flags into opts.
func (o *etcdOpts) apply(opts *backend.DaemonOptions, log *slog.Logger) error {
	if o.endpoints == "" {
		if o.caCert != "" || o.cert != "" || o.keyFile != "" {
			return errors.New("--etcd-cacert, --etcd-cert and --etcd-key need --etcd")
		}
		return nil
	}
	if opts.Runtime.Remote.Datapath == nil && len(opts.Runtime.Remote.Accelerated) == 0 {
		return errors.New("--etcd needs --listen or --dpdk (or --rdma, --xdp): a datapath the peers reach")
	}
	fo := &fleet.Options{Prefix: o.prefix, TTL: o.ttl, DialTimeout: o.dialTimeout, Logger: log}
	anyTLS := false
	for _, e := range strings.Split(o.endpoints, ",") {
		e = strings.TrimSpace(e)
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--etcd %q: want http://HOST:PORT or https://HOST:PORT", e)
		}
		anyTLS = anyTLS || u.Scheme == "https"
		fo.Endpoints = append(fo.Endpoints, e)
	}
	if !strings.HasPrefix(o.prefix, "/") || strings.Trim(o.prefix, "/") == "" {
		return fmt.Errorf("--etcd-prefix %q: want an absolute key prefix such as /veloce", o.prefix)
	}
	if o.ttl < 2*time.Second {
		return fmt.Errorf("--etcd-ttl %v: at least 2s", o.ttl)
	}
	if o.dialTimeout <= 0 {
		return errors.New("--etcd-dial-timeout: must be positive")
	}
	if (o.cert == "") != (o.keyFile == "") {
		return errors.New("--etcd-cert and --etcd-key go together")
	}
	if anyTLS || o.caCert != "" || o.cert != "" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.caCert != "" {
			pem, err := os.ReadFile(o.caCert)
			if err != nil {
				return fmt.Errorf("--etcd-cacert: %w", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return fmt.Errorf("--etcd-cacert %s: no PEM certificate", o.caCert)
			}
		}
		if o.cert != "" {
			c, err := tls.LoadX509KeyPair(o.cert, o.keyFile)
			if err != nil {
				return fmt.Errorf("--etcd-cert/--etcd-key: %w", err)
			}
			cfg.Certificates = []tls.Certificate{c}
		}
		fo.TLS = cfg
	}
	opts.Runtime.Remote.Etcd = fo
	return nil
}
