package migration_test

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/veloce-io/veloce/migration"
)

// The source daemon signs a port's snapshot with the fleet key; the
// destination accepts it only under the same key, and learns which
// failure it was otherwise.
func Example() {
	fleetKey := []byte("0123456789abcdef0123456789abcdef") // from the daemons' configuration

	snap := &migration.PortSnapshot{
		Port:     "vm1",
		Sessions: []migration.Session{{ID: 1, Addr: netip.MustParseAddrPort("169.254.77.2:40000")}},
		Streams:  []migration.Stream{{ID: 2, Session: 1, Datapath: "udp"}},
		Sources:  []migration.Source{{ID: 3, Stream: 2, Channel: 42, NextSeq: 17}},
		Sinks: []migration.Sink{{ID: 4, Stream: 2, Channel: 42, Queued: []migration.Message{
			{Source: 3, Seq: 16, Payload: []byte("not yet delivered")},
		}}},
	}
	b, err := migration.EncodeSigned(snap, fleetKey)
	if err != nil {
		panic(err)
	}

	got, err := migration.DecodeSigned(b, fleetKey, nil)
	if err != nil {
		panic(err)
	}
	fmt.Printf("%s: source %d resumes at seq %d; sink %d has %q queued\n",
		got.Port, got.Sources[0].ID, got.Sources[0].NextSeq, got.Sinks[0].ID, got.Sinks[0].Queued[0].Payload)

	_, err = migration.DecodeSigned(b, []byte("another fleet's key, 32 bytes..."), nil)
	fmt.Println(errors.Is(err, migration.ErrUnauthenticated), err)
	_, err = migration.DecodeSigned(b[:len(b)-1], fleetKey, nil)
	fmt.Println(errors.Is(err, migration.ErrTruncated), err)
	// Output:
	// vm1: source 3 resumes at seq 17; sink 4 has "not yet delivered" queued
	// true decode snapshot: HMAC does not verify: snapshot not authenticated
	// true decode snapshot: 309 of 310 bytes: snapshot truncated
}
