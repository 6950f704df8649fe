// Package chvtest is a fake Cloud Hypervisor API server for tests, in the
// manner of go-qemu's qmp/qmptest. Cloud Hypervisor cannot run on hosts
// without KVM, so tests of the chv driver talk to this instead.
//
// It is written from Cloud Hypervisor's OpenAPI spec
// (vmm/src/api/openapi/cloud-hypervisor.yaml) and serves, on a unix
// socket, under /api/v1:
//
//	GET  /vmm.ping               200 VmmPingResponse
//	GET  /vm.info                200 VmInfo; 404 when no VM is created
//	PUT  /vm.receive-migration   204 when received; 500 when not
//	PUT  /vm.send-migration      204 when sent; 500 when not
//
// A request body is checked against the spec's schema (ReceiveMigrationData,
// SendMigrationData): required fields, the fields' types, enums and bounds,
// and no field the schema lacks; a body that fails gets 400, as Cloud
// Hypervisor answers a body it cannot parse. Every request is recorded
// (Calls).
//
// Migration is simulated between two servers over a real socket, the way
// Cloud Hypervisor does it: vm.receive-migration listens on receiver_url
// and answers only once the migration is in (or has failed);
// vm.send-migration connects to destination_url, sends memory, pauses the
// VM, sends the device state and the completion, and answers once the
// destination has acknowledged it. The source VM then ends Shutdown and the
// destination's Running; a failed migration leaves the source Running. The
// bytes on that socket are this package's own, not Cloud Hypervisor's.
//
// # Hook for the vhost-user sequence
//
// Options.OnPhase is called at each Phase of a migration, on the server's
// own side, while the migration waits for it. A test that plays Cloud
// Hypervisor's vhost-user messages to a backend at migration (dirty logging
// on, memory, pause, device state, resume) does it there; an error from
// OnPhase fails the migration at that point.
package chvtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// VM states (VmState in the spec).
const (
	StateCreated  = "Created"
	StateRunning  = "Running"
	StateShutdown = "Shutdown"
	StatePaused   = "Paused"
)

// Phase is a step of a simulated migration.
type Phase string

// Phases, in the order they happen on each side.
const (
	// Destination side.
	PhaseReceiveListening Phase = "receive-listening" // bound receiver_url
	PhaseReceiveConnected Phase = "receive-connected" // the source connected
	PhaseReceiveState     Phase = "receive-state"     // device state in: restore devices
	PhaseReceiveResumed   Phase = "receive-resumed"   // VM Running on the destination
	// Source side.
	PhaseSendConnected Phase = "send-connected"  // connected to destination_url
	PhaseDirtyLogStart Phase = "dirty-log-start" // dirty logging on (vhost-user LOG_ALL, SET_LOG_BASE)
	PhaseMemory        Phase = "memory"          // memory copied while the VM runs
	PhasePaused        Phase = "paused"          // VM paused for the last pass
	PhaseDirtyLogStop  Phase = "dirty-log-stop"  // dirty logging off
	PhaseSendState     Phase = "send-state"      // device state out (vhost-user DEVICE_STATE)
	PhaseSendComplete  Phase = "send-complete"   // destination acknowledged; source VM Shutdown
)

// Options configure a fake server.
type Options struct {
	// Socket is the API socket path (cloud-hypervisor --api-socket);
	// required. It must not exist yet.
	Socket string
	// State is the VM's state at start: "" means no VM is created (a
	// destination started to receive a migration), else one of the State
	// constants.
	State string
	// MemoryBytes is how much "guest memory" a send transfers; default
	// 1 MiB.
	MemoryBytes int
	// Version is what vmm.ping reports; default "v48.0".
	Version string
	// OnPhase, when set, is called at each phase of a migration on this
	// server's side; an error fails the migration there. ctx ends when
	// the server closes.
	OnPhase func(ctx context.Context, p Phase) error
}

// Call is one request the server received.
type Call struct {
	// Method and Path as requested, Path without the /api/v1 prefix.
	Method, Path string
	// Body is the request body.
	Body []byte
	// Status is the HTTP status answered.
	Status int
	// Answer is the response body.
	Answer string
}

// Server is a fake Cloud Hypervisor API.
type Server struct {
	opts Options
	ln   net.Listener
	srv  *http.Server
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu    sync.Mutex
	state string // +checklocks:mu
	calls []Call // +checklocks:mu
	// failNext maps a path to its injected answer.
	failNext map[string]failure // +checklocks:mu
	// busy: a migration runs.
	busy bool // +checklocks:mu
	// received counts the memory bytes received.
	received int // +checklocks:mu
}

type failure struct {
	status int
	body   string
}

// Start listens on opts.Socket and serves until Close.
func Start(opts Options) (*Server, error) {
	if opts.Socket == "" {
		return nil, errors.New("start fake cloud-hypervisor: no socket path")
	}
	if opts.MemoryBytes <= 0 {
		opts.MemoryBytes = 1 << 20
	}
	if opts.Version == "" {
		opts.Version = "v48.0"
	}
	ln, err := net.Listen("unix", opts.Socket)
	if err != nil {
		return nil, fmt.Errorf("start fake cloud-hypervisor: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Server{opts: opts, ln: ln, ctx: ctx, stop: stop, state: opts.State, failNext: map[string]failure{}}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve), BaseContext: func(net.Listener) context.Context { return ctx }}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.srv.Serve(ln)
	}()
	return s, nil
}

// Close stops serving, ends migrations in progress and waits for them.
func (s *Server) Close() error {
	s.stop()
	err := s.srv.Close()
	s.wg.Wait()
	os.Remove(s.opts.Socket)
	return err
}

// Socket returns the API socket path.
func (s *Server) Socket() string { return s.opts.Socket }

// State returns the VM's state ("" when no VM is created).
func (s *Server) State() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// SetState sets the VM's state ("" removes the VM).
func (s *Server) SetState(state string) {
	s.mu.Lock()
	s.state = state
	s.mu.Unlock()
}

// Received returns how many memory bytes the last received migration
// carried.
func (s *Server) Received() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.received
}

// Calls returns the requests so far.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// FailNext makes the next request to path (e.g. "/vm.send-migration")
// answer status with body, without doing anything.
func (s *Server) FailNext(path string, status int, body string) {
	s.mu.Lock()
	s.failNext[path] = failure{status, body}
	s.mu.Unlock()
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	path := strings.TrimPrefix(r.URL.Path, "/api/v1")
	status, answer := s.handle(r.Method, path, body)
	s.mu.Lock()
	s.calls = append(s.calls, Call{Method: r.Method, Path: path, Body: body, Status: status, Answer: answer})
	s.mu.Unlock()
	if answer != "" && status == http.StatusOK {
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(status)
	io.WriteString(w, answer)
}

func (s *Server) handle(method, path string, body []byte) (int, string) {
	s.mu.Lock()
	f, injected := s.failNext[path]
	delete(s.failNext, path)
	s.mu.Unlock()
	if injected {
		return f.status, f.body
	}
	want := map[string]string{"/vmm.ping": http.MethodGet, "/vm.info": http.MethodGet,
		"/vm.receive-migration": http.MethodPut, "/vm.send-migration": http.MethodPut}[path]
	switch {
	case want == "":
		return http.StatusNotFound, "unknown endpoint " + path
	case method != want:
		return http.StatusMethodNotAllowed, method + " not allowed on " + path
	}
	switch path {
	case "/vmm.ping":
		b, _ := json.Marshal(map[string]any{"version": s.opts.Version, "build_version": s.opts.Version + "-chvtest", "pid": os.Getpid()})
		return http.StatusOK, string(b)
	case "/vm.info":
		state := s.State()
		if state == "" {
			return http.StatusNotFound, "VM is not created"
		}
		b, _ := json.Marshal(map[string]any{
			"config": map[string]any{"payload": map[string]any{"kernel": "/chvtest/vmlinux"}},
			"state":  state,
		})
		return http.StatusOK, string(b)
	case "/vm.receive-migration":
		var req map[string]any
		if err := validate(body, receiveMigrationSchema, &req); err != nil {
			return http.StatusBadRequest, "ReceiveMigrationData: " + err.Error()
		}
		if err := s.receive(req["receiver_url"].(string)); err != nil {
			return http.StatusInternalServerError, "Error receiving migration: " + err.Error()
		}
		return http.StatusNoContent, ""
	default: // /vm.send-migration
		var req map[string]any
		if err := validate(body, sendMigrationSchema, &req); err != nil {
			return http.StatusBadRequest, "SendMigrationData: " + err.Error()
		}
		if err := s.send(req); err != nil {
			return http.StatusInternalServerError, "Error sending migration: " + err.Error()
		}
		return http.StatusNoContent, ""
	}
}

// claim marks a migration running, if none is and the VM state allows it.
func (s *Server) claim(wantVM bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.busy:
		return errors.New("a migration is already in progress")
	case wantVM && s.state != StateRunning && s.state != StatePaused:
		return fmt.Errorf("VM is not running (state %q)", s.state)
	case !wantVM && s.state != "":
		return errors.New("a VM is already created")
	}
	s.busy = true
	return nil
}

func (s *Server) release() {
	s.mu.Lock()
	s.busy = false
	s.mu.Unlock()
}

func (s *Server) phase(ctx context.Context, p Phase) error {
	if s.opts.OnPhase == nil {
		return nil
	}
	if err := s.opts.OnPhase(ctx, p); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}

// The simulated migration stream: a header line, "memory N" and N bytes,
// "state", "complete"; the receiver answers "ok".
const streamHeader = "chvtest-migration v1"

func listen(url string) (net.Listener, error) {
	scheme, addr, _ := strings.Cut(url, ":")
	switch scheme {
	case "unix":
		return net.Listen("unix", addr)
	case "tcp":
		return net.Listen("tcp", addr)
	}
	return nil, fmt.Errorf("unsupported URL %q (want unix:PATH or tcp:HOST:PORT)", url)
}

func (s *Server) receive(url string) error {
	if err := s.claim(false); err != nil {
		return err
	}
	defer s.release()
	ln, err := listen(url)
	if err != nil {
		return fmt.Errorf("bind %s: %w", url, err)
	}
	defer ln.Close()
	if scheme, path, _ := strings.Cut(url, ":"); scheme == "unix" {
		defer os.Remove(path)
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	if err := s.phase(ctx, PhaseReceiveListening); err != nil {
		return err
	}
	conn, err := ln.Accept()
	if err != nil {
		return fmt.Errorf("accept: %w", err)
	}
	defer conn.Close()
	context.AfterFunc(ctx, func() { conn.Close() })
	if err := s.phase(ctx, PhaseReceiveConnected); err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	line := func() (string, error) {
		l, err := r.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("read migration stream: %w", err)
		}
		return strings.TrimSuffix(l, "\n"), nil
	}
	if l, err := line(); err != nil || l != streamHeader {
		return fmt.Errorf("bad migration stream header %q: %v", l, err)
	}
	s.mu.Lock()
	s.state = StatePaused // created from the source's config, not yet running
	s.mu.Unlock()
	fail := func(err error) error {
		s.SetState("")
		return err
	}
	n := 0
	if l, err := line(); err != nil {
		return fail(err)
	} else if _, err := fmt.Sscanf(l, "memory %d", &n); err != nil {
		return fail(fmt.Errorf("bad memory command %q", l))
	}
	if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
		return fail(fmt.Errorf("read memory: %w", err))
	}
	if l, err := line(); err != nil || l != "state" {
		return fail(fmt.Errorf("want state, got %q: %v", l, err))
	}
	if err := s.phase(ctx, PhaseReceiveState); err != nil {
		return fail(err)
	}
	if l, err := line(); err != nil || l != "complete" {
		return fail(fmt.Errorf("want complete, got %q: %v", l, err))
	}
	s.mu.Lock()
	s.state, s.received = StateRunning, n
	s.mu.Unlock()
	if _, err := io.WriteString(conn, "ok\n"); err != nil {
		return fail(fmt.Errorf("acknowledge: %w", err))
	}
	return s.phase(ctx, PhaseReceiveResumed)
}

func (s *Server) send(req map[string]any) error {
	url := req["destination_url"].(string)
	local, _ := req["local"].(bool)
	mode, _ := req["memory_mode"].(string)
	if (local || mode == "MemFDs") && !strings.HasPrefix(url, "unix:") {
		return errors.New("local (MemFDs) migration needs a unix: destination URL")
	}
	if p, _ := req["preserve_source"].(bool); p && !local && mode != "MemFDs" {
		return errors.New("preserve_source needs memory_mode MemFDs")
	}
	if c, ok := req["connections"].(float64); ok && c > 1 && strings.HasPrefix(url, "unix:") {
		return errors.New("multiple connections need a tcp: URL")
	}
	if err := s.claim(true); err != nil {
		return err
	}
	defer s.release()
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	scheme, addr, _ := strings.Cut(url, ":")
	if scheme != "unix" && scheme != "tcp" {
		return fmt.Errorf("unsupported URL %q (want unix:PATH or tcp:HOST:PORT)", url)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, scheme, addr)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", url, err)
	}
	defer conn.Close()
	context.AfterFunc(ctx, func() { conn.Close() })
	wasRunning := s.State() == StateRunning
	fail := func(err error) error {
		if wasRunning {
			s.SetState(StateRunning) // Cloud Hypervisor resumes the source
		}
		return err
	}
	w := bufio.NewWriter(conn)
	steps := []func() error{
		func() error { return s.phase(ctx, PhaseSendConnected) },
		func() error {
			_, err := fmt.Fprintf(w, "%s\nmemory %d\n", streamHeader, s.opts.MemoryBytes)
			return err
		},
		func() error { return s.phase(ctx, PhaseDirtyLogStart) },
		func() error {
			_, err := w.Write(bytes.Repeat([]byte{0xcc}, s.opts.MemoryBytes))
			return err
		},
		func() error { return s.phase(ctx, PhaseMemory) },
		func() error { s.SetState(StatePaused); return s.phase(ctx, PhasePaused) },
		func() error { return s.phase(ctx, PhaseDirtyLogStop) },
		func() error { return s.phase(ctx, PhaseSendState) },
		func() error { _, err := io.WriteString(w, "state\ncomplete\n"); return err },
		w.Flush,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return fail(err)
		}
	}
	conn.SetReadDeadline(time.Now().Add(time.Minute))
	ack, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || ack != "ok\n" {
		return fail(fmt.Errorf("destination did not acknowledge completion: %q %v", ack, err))
	}
	s.SetState(StateShutdown)
	return s.phase(ctx, PhaseSendComplete)
}
