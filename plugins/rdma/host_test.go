package rdma

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	irdma "github.com/veloce-io/veloce/internal/rdma"
)

// Without the binding New says so; with it, on a host without RDMA
// devices (this one: RDMA is tested inside VMs), it says there is no
// device. Either way the runtime falls back to another datapath.
func TestNewUnavailableOrNoDevice(t *testing.T) {
	_, err := New(Options{Addr: netip.MustParsePrefix("127.0.0.1/8")})
	switch {
	case !Available():
		if !errors.Is(err, irdma.ErrUnavailable) {
			t.Fatalf("New without the binding: %v, want ErrUnavailable", err)
		}
	case len(irdma.DeviceNames()) == 0:
		if !errors.Is(err, irdma.ErrNoDevice) {
			t.Fatalf("New without devices: %v, want ErrNoDevice", err)
		}
	default:
		t.Skipf("this machine has RDMA devices %v", irdma.DeviceNames())
	}
	if _, err := New(Options{Addr: netip.MustParsePrefix("2001:db8::1/64")}); err == nil {
		t.Error("New accepted an IPv6 address")
	}
}

// The default signaller carries endpoints both ways and refusals back.
func TestTCPSignallerExchange(t *testing.T) {
	s, err := NewTCPSignaller(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := netip.MustParseAddrPort(s.ln.Addr().String())
	mine := Endpoint{Addr: netip.MustParseAddrPort("10.0.0.2:7000"), QPN: 17, PSN: 0xabcdef, GID: irdma.GIDForAddr(netip.MustParseAddr("10.0.0.2")), SlotSize: 4096, MTU: irdma.MTU1024}
	go s.Serve(func(remote Endpoint) (Endpoint, error) {
		if remote.QPN == 99 {
			return Endpoint{}, errors.New("no")
		}
		return mine, nil
	})
	req := Endpoint{Addr: netip.MustParseAddrPort("10.0.0.1:7000"), QPN: 5, PSN: 1, SlotSize: 2048, MTU: irdma.MTU4096}
	got, err := s.Request(context.Background(), addr, req)
	if err != nil || got != mine {
		t.Fatalf("Request = %+v, %v; want %+v", got, err, mine)
	}
	req.QPN = 99
	if _, err := s.Request(context.Background(), addr, req); !errors.Is(err, ErrRefused) {
		t.Fatalf("refused request: %v, want ErrRefused", err)
	}
	s2, _ := NewTCPSignaller(netip.MustParseAddrPort("127.0.0.1:0"))
	dead := netip.MustParseAddrPort(s2.ln.Addr().String())
	s2.Close()
	if _, err := s.Request(context.Background(), dead, req); err == nil || errors.Is(err, ErrRefused) {
		t.Fatalf("request to nobody: %v", err)
	}
}
