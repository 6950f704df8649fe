package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/veloce-io/veloce/migration/hypervisor"
)

// Monitor runs QMP commands: command with optional arguments (a map or a
// struct marshalled to JSON), the "return" member decoded into out when out
// is non-nil. It must honour ctx. *Conn implements it, and so does
// vmtest.VM's QMP method.
type Monitor interface {
	QMP(ctx context.Context, command string, args, out any) error
}

var _ Monitor = (*Conn)(nil)

// Conn is a QMP connection made with go-qemu's SocketMonitor. It drains
// QMP events (go-qemu blocks command replies while its event channel is
// unread) and runs each command so that ctx is honoured: go-qemu's Run
// takes no context. QEMU's -qmp socket serves one client at a time, so
// give QEMU a second -qmp socket for the migration when something else
// (libvirt, vmtest) holds the first.
type Conn struct {
	mon *qmp.SocketMonitor
	wg  sync.WaitGroup // the event drain and commands abandoned by their ctx

	mu     sync.Mutex
	closed bool // +checklocks:mu
}

// Dial connects to the QMP unix socket at path and does the capabilities
// handshake. Errors wrap hypervisor.ErrUnavailable.
func Dial(ctx context.Context, path string) (*Conn, error) {
	timeout := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	mon, err := qmp.NewSocketMonitor("unix", path, timeout)
	if err != nil {
		return nil, fmt.Errorf("dial qmp %s: %w: %w", path, hypervisor.ErrUnavailable, err)
	}
	errc := make(chan error, 1)
	go func() { errc <- mon.Connect() }() // ends with the socket, closed below on ctx's end
	select {
	case err = <-errc:
	case <-ctx.Done():
		mon.Disconnect()
		<-errc
		err = ctx.Err()
	}
	if err != nil {
		mon.Disconnect()
		return nil, fmt.Errorf("connect qmp %s: %w: %w", path, hypervisor.ErrUnavailable, err)
	}
	c := &Conn{mon: mon}
	events, err := mon.Events(context.Background())
	if err != nil {
		mon.Disconnect()
		return nil, fmt.Errorf("connect qmp %s: %w", path, err)
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for range events { // closed when the connection ends
		}
	}()
	return c, nil
}

// QMP implements Monitor. A command whose ctx ends is abandoned: its reply
// is read and dropped in the background, and Close waits for it.
func (c *Conn) QMP(ctx context.Context, command string, args, out any) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return fmt.Errorf("qmp %s: connection closed: %w", command, hypervisor.ErrUnavailable)
	}
	c.wg.Add(1)
	c.mu.Unlock()
	req, err := encodeCommand(command, args)
	if err != nil {
		c.wg.Done()
		return err
	}
	type reply struct {
		raw []byte
		err error
	}
	ch := make(chan reply, 1)
	go func() {
		defer c.wg.Done()
		raw, err := c.mon.Run(req)
		ch <- reply{raw, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return fmt.Errorf("qmp %s: %w", command, r.err)
		}
		return decodeReturn(command, r.raw, out)
	case <-ctx.Done():
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

// Close disconnects and waits for the connection's goroutines.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	err := c.mon.Disconnect()
	c.wg.Wait()
	return err
}

func encodeCommand(command string, args any) ([]byte, error) {
	cmd := qmp.Command{Execute: command}
	if args != nil {
		m, ok := args.(map[string]any)
		if !ok {
			b, err := json.Marshal(args)
			if err != nil {
				return nil, fmt.Errorf("encode qmp %s: %w", command, err)
			}
			if err := json.Unmarshal(b, &m); err != nil {
				return nil, fmt.Errorf("encode qmp %s: arguments are not an object: %w", command, err)
			}
		}
		cmd.Args = m
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("encode qmp %s: %w", command, err)
	}
	return b, nil
}

func decodeReturn(command string, raw []byte, out any) error {
	if out == nil {
		return nil
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(raw, &resp); err != nil {
		return fmt.Errorf("decode qmp %s reply: %w", command, err)
	}
	if len(resp.Return) == 0 {
		return fmt.Errorf("decode qmp %s reply: %w", command, errors.New("no return member"))
	}
	if err := json.Unmarshal(resp.Return, out); err != nil {
		return fmt.Errorf("decode qmp %s reply: %w", command, err)
	}
	return nil
}
