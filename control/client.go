package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// DefaultTimeout bounds one Client request unless ClientOptions say
// otherwise.
const DefaultTimeout = 10 * time.Second

// ClientOptions configure a Client.
type ClientOptions struct {
	// Socket is the daemon's control socket; default DefaultSocket.
	Socket string
	// Timeout bounds each request, connection included; default
	// DefaultTimeout. The request's context can end it sooner.
	Timeout time.Duration
}

// Client calls a daemon's control API. It is safe for concurrent use and
// holds idle connections until CloseIdleConnections.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the control socket at socket (empty:
// DefaultSocket), with DefaultTimeout.
func NewClient(socket string) *Client { return NewClientWith(ClientOptions{Socket: socket}) }

// NewClientWith returns a client configured by opts.
func NewClientWith(opts ClientOptions) *Client {
	if opts.Socket == "" {
		opts.Socket = DefaultSocket
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	socket := opts.Socket
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", socket)
		if err != nil {
			return nil, &UnreachableError{Socket: socket, Err: err}
		}
		return c, nil
	}}
	return &Client{socket: socket, hc: &http.Client{Transport: tr, Timeout: opts.Timeout}}
}

// Socket returns the control socket the client calls.
func (c *Client) Socket() string { return c.socket }

// CloseIdleConnections closes the client's idle connections.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// Ports lists the daemon's VM ports (GET PathPorts).
func (c *Client) Ports(ctx context.Context) ([]PortInfo, error) {
	var out []PortInfo
	return out, c.do(ctx, http.MethodGet, PathPorts, nil, &out)
}

// Streams lists the daemon's streams (GET PathStreams).
func (c *Client) Streams(ctx context.Context) ([]StreamInfo, error) {
	var out []StreamInfo
	return out, c.do(ctx, http.MethodGet, PathStreams, nil, &out)
}

// Apps describes the daemon's host applications (GET PathApps).
func (c *Client) Apps(ctx context.Context) (HostAppsInfo, error) {
	var out HostAppsInfo
	return out, c.do(ctx, http.MethodGet, PathApps, nil, &out)
}

// Remote describes the daemon's datapaths to other hosts and its peers
// (GET PathRemote).
func (c *Client) Remote(ctx context.Context) (RemoteInfo, error) {
	var out RemoteInfo
	return out, c.do(ctx, http.MethodGet, PathRemote, nil, &out)
}

// do sends one request with in (when not nil) as its JSON body and
// decodes a 2xx response's body into out (when not nil). It returns an
// *UnreachableError when the daemon cannot be reached, an *APIError for
// a response that is not 2xx.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s %s request: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://veloced"+path, body)
	if err != nil {
		return fmt.Errorf("build %s %s request: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ue, ok := errors.AsType[*UnreachableError](err); ok {
			return ue
		}
		return fmt.Errorf("veloced control API: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		e := &APIError{Method: method, Path: path, Status: resp.StatusCode, Message: http.StatusText(resp.StatusCode)}
		var eb ErrorBody
		if b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10)); err == nil && json.Unmarshal(b, &eb) == nil && eb.Error != "" {
			e.Message = eb.Error
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s %s response: %w", method, path, err)
	}
	return nil
}
