// Package xdp holds the AF_XDP mechanics behind plugins/xdp: an XSK socket
// with its UMEM and its four rings (Socket), and the XDP program that
// steers the plugin's datagrams to it (Program). It is pure Go: the socket
// is golang.org/x/sys/unix, the program is written here with cilium/ebpf's
// asm package and loaded and attached with cilium/ebpf, so no C compiler
// or clang is needed and the program is reproducible from this source.
//
// Every unsafe operation (the rings' producer and consumer words and
// descriptors in the kernel's shared mappings, the socket options that
// take structs) is in socket_unsafe.go.
//
// A Socket is not safe for concurrent use: its owner serialises the RX side
// (Receive, Fill) and the TX side (Transmit, Complete) itself; the two
// sides may run on different goroutines at once, since they touch
// different rings.
package xdp
