package guestlib_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/veloce-io/veloce/guestlib"
)

// A source and a sink on channel 42. Inside a VM, Open finds the daemon on
// the VM's link; on the host, on its unix socket.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := guestlib.Open(ctx, guestlib.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	st, err := s.CreateStream(ctx, guestlib.StreamOptions{Acceleration: true})
	if err != nil {
		log.Fatal(err)
	}
	if st.Warning != "" {
		log.Printf("stream on %s: %s", st.Datapath, st.Warning) // no accelerator here: kernel UDP
	}
	sink, err := st.CreateSink(ctx, 42, guestlib.SinkOptions{})
	if err != nil {
		log.Fatal(err)
	}
	src, err := st.CreateSource(ctx, 42)
	if err != nil {
		log.Fatal(err)
	}

	b, err := src.GetBuffer(guestlib.MaxMessage)
	if err != nil {
		log.Fatal(err)
	}
	b.Truncate(copy(b.Data, "hello")) // written in place; Emit sends the 5 bytes
	tok, err := src.Emit(b)
	if err != nil {
		log.Fatal(err)
	}

	m, err := sink.Consume(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s (seq %d)\n", m.Data, m.Seq)
	m.Release()
	if err := src.Outcome(tok); err != nil {
		log.Print(err)
	}
}

// A sink that delivers by callback instead of Consume.
func ExampleStream_CreateSink_callback() {
	ctx := context.Background()
	s, err := guestlib.Open(ctx, guestlib.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	st, _ := s.CreateStream(ctx, guestlib.StreamOptions{})
	_, err = st.CreateSink(ctx, 7, guestlib.SinkOptions{Callback: func(m *guestlib.Message) {
		fmt.Printf("channel %d: %q\n", m.Channel, m.Data)
		m.Release()
	}})
	if err != nil {
		log.Fatal(err)
	}
}
