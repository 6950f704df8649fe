// Package chv migrates a Cloud Hypervisor VM over its HTTP API (the
// --api-socket unix socket): a hypervisor.Driver for `velocectl migrate`
// (see package migration/hypervisor). The endpoints and bodies are those of
// Cloud Hypervisor's OpenAPI spec (vmm/src/api/openapi/cloud-hypervisor.yaml):
//
//   - Prepare: PUT /api/v1/vm.receive-migration {"receiver_url": URL} on
//     the destination, a VMM started with only --api-socket. Cloud
//     Hypervisor answers it (204, or 500) only when the migration is in, so
//     the driver keeps the request open in a goroutine; Prepare returns
//     once the destination listens (for a unix: URL, once its socket
//     exists; for tcp: once the request is sent, since probing the port
//     would take Cloud Hypervisor's single accept).
//   - Start: PUT /api/v1/vm.send-migration {"destination_url": URL,
//     "local": ...} on the source; answered (204 or 500) when the migration
//     is over, so it too is kept open in a goroutine.
//   - Progress: GET /api/v1/vm.info's state every ProgressInterval. Cloud
//     Hypervisor reports no migration figures (bytes, dirty rate,
//     downtime): Progress.Reported and Summary.DowntimeReported stay false.
//     A source that turns Paused is in its last pass (StatusDevice).
//   - Completion: the source VM ends Shutdown, the destination's Running.
//
// # Where the Switchover hook runs
//
// Cloud Hypervisor has no pause-before-switchover: it pauses the source,
// sends device state, and resumes the destination on its own. When the
// port's snapshot rides in the vhost-user DEVICE_STATE transfer (Cloud
// Hypervisor sends it), no hook is needed: leave Hooks.Switchover nil.
// Otherwise the hook runs as soon as vm.send-migration has answered 204 —
// after the guest already runs on the destination. That is a gap: from
// the destination's resume until the hook has handed the streams over, the
// destination daemon must hold the port's streams (it imports before it
// resumes them), so the guest sees a stall on its streams, not lost state;
// frames the guest sends meanwhile wait in its rings. A failing hook cannot
// undo the migration: Wait reports Status completed with an Err wrapping
// hypervisor.ErrSwitchover.
//
// # Cancel
//
// The spec has no call that cancels a migration in progress (its only
// abort is SendMigrationData's timeout_s with timeout_strategy Cancel,
// which Options.Timeout sets). So Cancel after Start returns
// hypervisor.ErrNotSupported. Between Prepare and Start, Cancel releases
// the destination: it connects to the receiver URL and closes at once,
// which makes Cloud Hypervisor fail the receive and free its VMM.
package chv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/veloce-io/veloce/migration/hypervisor"
)

// Options configure a Cloud Hypervisor migration.
type Options struct {
	// Hooks are the Switchover hook (see the package doc for where it
	// runs) and the Progress callback.
	hypervisor.Hooks
	// SourceSocket is the source VMM's --api-socket path; required.
	SourceSocket string
	// DestinationSocket is the destination VMM's --api-socket path. When
	// empty, Prepare does nothing: the caller has started the receive.
	DestinationSocket string
	// URL is the migration's destination_url: "unix:PATH" or
	// "tcp:HOST:PORT"; required.
	URL string
	// ReceiverURL is the destination's receiver_url when it differs from
	// URL (a tcp: listener on 0.0.0.0); default URL.
	ReceiverURL string
	// Local asks for a local migration ("local": true, memory passed as
	// file descriptors): same host, unix: URL, shared guest memory.
	Local bool
	// Downtime, when positive, is sent as downtime_ms (Cloud Hypervisor
	// versions with it; others ignore the field).
	Downtime time.Duration
	// Timeout, when positive, is sent as timeout_s: Cloud Hypervisor gives
	// up (and keeps the VM on the source) after it.
	Timeout time.Duration
	// RequestTimeout bounds the driver's short API calls (vm.info,
	// vmm.ping); default 10 s.
	RequestTimeout time.Duration
}

// APIError is a Cloud Hypervisor API answer other than success. It
// matches hypervisor.ErrFailed for a 500 on a migration endpoint.
type APIError struct {
	// Method and Path are the request's, Path without /api/v1.
	Method, Path string
	// Status is the HTTP status code.
	Status int
	// Body is Cloud Hypervisor's error text.
	Body string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("cloud-hypervisor %s %s: %d %s: %s", e.Method, e.Path, e.Status, http.StatusText(e.Status), strings.TrimSpace(e.Body))
}

// Is matches hypervisor.ErrFailed for a failed migration request.
func (e *APIError) Is(target error) bool {
	return target == hypervisor.ErrFailed && e.Status == http.StatusInternalServerError && strings.HasSuffix(e.Path, "-migration")
}

// Client calls one Cloud Hypervisor VMM's API.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the API socket at path; it connects on
// each request.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true,
	}
	return &Client{socket: path, http: &http.Client{Transport: tr}}
}

// Do sends method path (without /api/v1) with body (nil for none, else
// marshalled to JSON) and decodes a 200 answer into out. An unreachable
// socket wraps hypervisor.ErrUnavailable and says how to fix it; a non-2xx
// answer is an *APIError. wrote, when set, is called once the request is
// sent.
func (c *Client) Do(ctx context.Context, method, path string, body, out any, wrote func()) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode %s body: %w", path, err)
		}
		rd = bytes.NewReader(b)
	}
	if wrote != nil {
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { wrote() }})
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost/api/v1"+path, rd)
	if err != nil {
		return fmt.Errorf("call cloud-hypervisor %s: %w", path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("call cloud-hypervisor %s: %w", path, ctx.Err())
		}
		return fmt.Errorf("call cloud-hypervisor %s: %w: %w (is cloud-hypervisor running with --api-socket %s?)",
			path, hypervisor.ErrUnavailable, err, c.socket)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("read cloud-hypervisor %s answer: %w", path, err)
	}
	if resp.StatusCode/100 != 2 {
		return &APIError{Method: method, Path: path, Status: resp.StatusCode, Body: string(b)}
	}
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode cloud-hypervisor %s answer: %w", path, err)
		}
	}
	return nil
}

// VMState returns vm.info's state, or "" when no VM is created (404).
func (c *Client) VMState(ctx context.Context) (string, error) {
	var info struct {
		State string `json:"state"`
	}
	err := c.Do(ctx, http.MethodGet, "/vm.info", nil, &info, nil)
	var ae *APIError
	if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return info.State, nil
}

// Driver is one Cloud Hypervisor migration. Create it with New.
type Driver struct {
	opts   Options
	src    *Client
	dst    *Client
	stop   context.CancelFunc // ends the requests in flight (Close)
	runCtx context.Context
	wg     sync.WaitGroup // the receive and send requests, the watcher

	mu       sync.Mutex
	prepared bool // +checklocks:mu
	started  bool // +checklocks:mu
	// received is closed when the receive request has its answer; nil
	// until Prepare starts it.
	received chan struct{} // +checklocks:mu
	recvErr  error         // valid after received is closed
	done     chan struct{} // closed when sum is final
	sum      *hypervisor.Summary
}

var _ hypervisor.Driver = (*Driver)(nil)

// New validates opts; it talks to no VMM yet. Errors wrap
// hypervisor.ErrInvalid.
func New(opts Options) (*Driver, error) {
	if opts.SourceSocket == "" {
		return nil, fmt.Errorf("new cloud-hypervisor migration: no source API socket: %w", hypervisor.ErrInvalid)
	}
	scheme, rest, _ := strings.Cut(opts.URL, ":")
	if (scheme != "unix" && scheme != "tcp") || rest == "" {
		return nil, fmt.Errorf("new cloud-hypervisor migration: URL %q is not unix:PATH or tcp:HOST:PORT: %w", opts.URL, hypervisor.ErrInvalid)
	}
	if opts.Local && scheme != "unix" {
		return nil, fmt.Errorf("new cloud-hypervisor migration: a local migration needs a unix: URL: %w", hypervisor.ErrInvalid)
	}
	if opts.ReceiverURL == "" {
		opts.ReceiverURL = opts.URL
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 10 * time.Second
	}
	opts.Hooks = opts.Hooks.WithDefaults()
	d := &Driver{opts: opts, src: NewClient(opts.SourceSocket), done: make(chan struct{})}
	if opts.DestinationSocket != "" {
		d.dst = NewClient(opts.DestinationSocket)
	}
	d.runCtx, d.stop = context.WithCancel(context.Background())
	return d, nil
}

func (d *Driver) short(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d.opts.RequestTimeout)
}

// Prepare starts vm.receive-migration on the destination and returns once
// it listens (see the package doc), or does nothing without
// DestinationSocket. Errors: hypervisor.ErrUnavailable (no API), an
// ErrDestination when it already has a VM or a stale socket sits at the
// receiver path, an *APIError when Cloud Hypervisor refuses at once.
func (d *Driver) Prepare(ctx context.Context) error {
	if d.dst == nil {
		return nil
	}
	d.mu.Lock()
	if d.prepared {
		d.mu.Unlock()
		return fmt.Errorf("prepare destination: %w", hypervisor.ErrStarted)
	}
	d.prepared = true
	d.mu.Unlock()
	sctx, cancel := d.short(ctx)
	state, err := d.dst.VMState(sctx)
	cancel()
	if err != nil {
		return fmt.Errorf("prepare destination: %w", err)
	}
	if state != "" {
		return fmt.Errorf("prepare destination: it already has a VM (%s): %w", state, hypervisor.ErrDestination)
	}
	scheme, path, _ := strings.Cut(d.opts.ReceiverURL, ":")
	if scheme == "unix" {
		if _, err := os.Stat(path); err == nil {
			return fmt.Errorf("prepare destination: %s exists (a stale socket?): %w", path, hypervisor.ErrDestination)
		}
	}
	wrote := make(chan struct{})
	var once sync.Once
	received := make(chan struct{})
	d.mu.Lock()
	d.received = received // only now: waitReceive and Cancel wait on it
	d.mu.Unlock()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		err := d.dst.Do(d.runCtx, http.MethodPut, "/vm.receive-migration",
			map[string]any{"receiver_url": d.opts.ReceiverURL}, nil, func() { once.Do(func() { close(wrote) }) })
		d.recvErr = err
		close(received)
	}()
	for {
		select {
		case <-received:
			if d.recvErr != nil {
				return fmt.Errorf("prepare destination: %w", d.recvErr)
			}
			return nil
		case <-ctx.Done():
			return fmt.Errorf("prepare destination: %w", ctx.Err())
		case <-wrote:
			if scheme != "unix" {
				return nil
			}
			if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
				return nil
			}
			select {
			case <-received:
			case <-ctx.Done():
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
}

// Start checks the source VM runs and sends vm.send-migration; it returns
// once the request is sent (or answered, when Cloud Hypervisor refuses at
// once: then the *APIError). ctx governs only this call; the migration
// goes on until Wait's answer. hypervisor.ErrStarted on a second call.
func (d *Driver) Start(ctx context.Context) error {
	d.mu.Lock()
	if d.started {
		d.mu.Unlock()
		return fmt.Errorf("start migration: %w", hypervisor.ErrStarted)
	}
	d.started = true
	d.mu.Unlock()
	begun := time.Now()
	sctx, cancel := d.short(ctx)
	state, err := d.src.VMState(sctx)
	cancel()
	if err == nil && state != "Running" {
		err = fmt.Errorf("source VM is %q, not Running: %w", state, hypervisor.ErrInvalid)
	}
	if err != nil {
		err = fmt.Errorf("start migration: %w", err)
		d.finish(&hypervisor.Summary{Status: hypervisor.StatusFailed, Err: err, TotalTime: time.Since(begun)})
		return err
	}
	body := map[string]any{"destination_url": d.opts.URL, "local": d.opts.Local}
	if d.opts.Downtime > 0 {
		body["downtime_ms"] = max(d.opts.Downtime.Milliseconds(), 1)
	}
	if d.opts.Timeout > 0 {
		body["timeout_s"] = max(int64(d.opts.Timeout/time.Second), 1)
	}
	wrote := make(chan struct{})
	sent := make(chan error, 1)
	var once sync.Once
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		sent <- d.send(body, func() { once.Do(func() { close(wrote) }) })
	}()
	select {
	case <-wrote:
	case err := <-sent:
		sent <- err // the watcher reads it
	case <-ctx.Done():
		d.stop()
		err := fmt.Errorf("start migration: %w", ctx.Err())
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			<-sent
			d.finish(&hypervisor.Summary{Status: hypervisor.StatusFailed, Err: err, TotalTime: time.Since(begun)})
		}()
		return err
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.finish(d.watch(begun, sent))
	}()
	return nil
}

// refusedRetry bounds how long send waits for the destination to listen.
// vm.receive-migration binds receiver_url only after its request has been
// read, and Prepare cannot see a TCP listener on another host bind, so a
// source that connects first is refused; Cloud Hypervisor then fails the
// send at once and the VM keeps running on the source, so sending again
// is safe.
const refusedRetry = 10 * time.Second

// send sends vm.send-migration, again while the source reports that the
// destination refused the connection (it is not listening yet) and the
// destination's receive is still pending.
func (d *Driver) send(body map[string]any, wrote func()) error {
	deadline := time.Now().Add(refusedRetry)
	for {
		err := d.src.Do(d.runCtx, http.MethodPut, "/vm.send-migration", body, nil, wrote)
		var ae *APIError
		if err == nil || !errors.As(err, &ae) || !strings.Contains(strings.ToLower(ae.Error()), "connection refused") ||
			time.Now().After(deadline) || d.receiveEnded() {
			return err
		}
		select {
		case <-d.runCtx.Done():
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// receiveEnded says the destination's vm.receive-migration was answered.
func (d *Driver) receiveEnded() bool {
	d.mu.Lock()
	received := d.received
	d.mu.Unlock()
	if received == nil {
		return false
	}
	select {
	case <-received:
		return true
	default:
		return false
	}
}

// watch reports progress until the send request is answered, then runs
// the hook and checks both sides.
func (d *Driver) watch(begun time.Time, sent <-chan error) *hypervisor.Summary {
	sum := &hypervisor.Summary{}
	report := func(st hypervisor.Status) {
		if d.opts.Progress != nil {
			d.opts.Progress(hypervisor.Progress{Status: st, Elapsed: time.Since(begun)})
		}
	}
	report(hypervisor.StatusActive)
	tick := time.NewTicker(d.opts.ProgressInterval)
	defer tick.Stop()
	var sendErr error
wait:
	for {
		select {
		case sendErr = <-sent:
			break wait
		case <-tick.C:
			st := hypervisor.StatusActive
			ctx, cancel := d.short(d.runCtx)
			if state, err := d.src.VMState(ctx); err == nil && state == "Paused" {
				st = hypervisor.StatusDevice
			}
			cancel()
			report(st)
		}
	}
	sum.TotalTime = time.Since(begun)
	if sendErr != nil {
		sum.Status = hypervisor.StatusFailed
		var ae *APIError
		if errors.As(sendErr, &ae) {
			sum.Err = &hypervisor.MigrationError{Status: hypervisor.StatusFailed, Desc: ae.Error()}
		} else {
			sum.Err = fmt.Errorf("send migration: %w", sendErr)
		}
		// Cloud Hypervisor's destination may still wait for a sender.
		ctx, cancel := d.short(d.runCtx)
		d.releaseDestination(ctx)
		cancel()
		report(hypervisor.StatusFailed)
		return sum
	}
	if d.opts.Switchover != nil {
		report(hypervisor.StatusPreSwitchover)
		sum.SwitchoverRan = true
		ctx, cancel := context.WithTimeout(d.runCtx, d.opts.SwitchoverTimeout)
		err := d.opts.Switchover(ctx)
		cancel()
		if err != nil {
			sum.Err = fmt.Errorf("%w: %w (the guest runs on the destination)", hypervisor.ErrSwitchover, err)
		}
	}
	sum.Status = hypervisor.StatusCompleted
	if rerr := d.waitReceive(); rerr != nil {
		sum.Err = errors.Join(sum.Err, fmt.Errorf("destination: %w", rerr))
	}
	if d.dst != nil {
		ctx, cancel := d.short(d.runCtx)
		state, err := d.dst.VMState(ctx)
		cancel()
		if err == nil && state != "Running" {
			err = fmt.Errorf("destination VM is %q after the migration, not Running", state)
		}
		if err != nil {
			sum.Err = errors.Join(sum.Err, err)
		}
	}
	sum.TotalTime = time.Since(begun)
	report(hypervisor.StatusCompleted)
	return sum
}

// waitReceive waits for the answer to the receive request, if Prepare
// sent one.
func (d *Driver) waitReceive() error {
	d.mu.Lock()
	received := d.received
	d.mu.Unlock()
	if received == nil {
		return nil
	}
	select {
	case <-received:
		return d.recvErr
	case <-d.runCtx.Done():
		return d.runCtx.Err()
	}
}

func (d *Driver) finish(sum *hypervisor.Summary) {
	d.sum = sum
	close(d.done)
}

// Cancel, between Prepare and Start, releases the destination (see the
// package doc) and returns nil once its receive has ended. After Start it
// returns hypervisor.ErrNotSupported while the migration runs,
// hypervisor.ErrCompleted once it completed, and nil once it failed.
// Before Prepare: hypervisor.ErrNotStarted.
func (d *Driver) Cancel(ctx context.Context) error {
	d.mu.Lock()
	prepared, started, received := d.prepared, d.started, d.received
	d.mu.Unlock()
	switch {
	case started:
		select {
		case <-d.done:
			if d.sum.Status == hypervisor.StatusCompleted {
				return fmt.Errorf("cancel migration: %w", hypervisor.ErrCompleted)
			}
			return nil
		default:
			return fmt.Errorf("cancel migration: cloud-hypervisor has no API to cancel a running migration: %w", hypervisor.ErrNotSupported)
		}
	case !prepared || received == nil:
		return fmt.Errorf("cancel migration: %w", hypervisor.ErrNotStarted)
	}
	if err := d.releaseDestination(ctx); err != nil {
		return fmt.Errorf("cancel migration: %w", err)
	}
	return nil
}

// releaseDestination ends a receive request still waiting for a sender:
// it connects to the receiver and closes, so Cloud Hypervisor fails the
// receive. It returns once the receive is answered.
func (d *Driver) releaseDestination(ctx context.Context) error {
	d.mu.Lock()
	received := d.received
	d.mu.Unlock()
	if received == nil {
		return nil
	}
	select {
	case <-received:
		return nil
	default:
	}
	scheme, addr, _ := strings.Cut(d.opts.URL, ":") // the address to reach it by
	var dl net.Dialer
	if c, err := dl.DialContext(ctx, scheme, addr); err == nil {
		c.Close()
	}
	select {
	case <-received:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("release destination: %w", ctx.Err())
	}
}

// Wait waits until the migration has ended and returns its summary and
// the summary's Err: nil when it completed; a *hypervisor.MigrationError
// (ErrFailed) when Cloud Hypervisor answered 500; ErrSwitchover when the
// hook failed (the migration itself completed). ErrNotStarted before
// Start; ctx's error when ctx ends first.
func (d *Driver) Wait(ctx context.Context) (*hypervisor.Summary, error) {
	d.mu.Lock()
	started := d.started
	d.mu.Unlock()
	if !started {
		return nil, fmt.Errorf("wait for migration: %w", hypervisor.ErrNotStarted)
	}
	select {
	case <-d.done:
		return d.sum, d.sum.Err
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for migration: %w", ctx.Err())
	}
}

// Close abandons the requests in flight (Cloud Hypervisor goes on with
// the migration) and waits for the driver's goroutines.
func (d *Driver) Close() error {
	d.stop()
	d.wg.Wait()
	return nil
}
