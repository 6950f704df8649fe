package wire_test

import (
	"fmt"

	"github.com/veloce-io/veloce/internal/wire"
)

func Example() {
	buf := make([]byte, 1500)
	h := wire.Header{
		Kind:      wire.KindData,
		Class:     wire.ClassReliable,
		FragCount: 1,
		Channel:   42,
		Source:    wire.NewSourceID(7, 1),
		Seq:       1000,
	}
	n, err := h.MarshalPacket(buf, []byte("hello"))
	if err != nil {
		panic(err)
	}

	got, payload, err := wire.Parse(buf[:n])
	fmt.Println(n, got.Kind, got.Class, got.Channel, got.Source.Node(), got.Seq, string(payload), err)
	_, _, err = wire.Parse([]byte("not ours"))
	fmt.Println(err)
	// Output:
	// 37 data reliable 42 7 1000 hello <nil>
	// wire: not a veloce message
}
