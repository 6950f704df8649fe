// Package fd owns file descriptors for the rest of Veloce: one owner type
// ([FD]) with an idempotent Close, ownership transfer ([FD.Disown]) and a
// leak cleanup; eventfds ([EventFD]: create or adopt, Signal that never
// blocks, Drain, Wait through the Go netpoller); the SCM_RIGHTS reader
// ([RecvMsg]) that turns received descriptors into owners; and
// [IsEventFD], which tells an eventfd from a socket, a pipe or a file.
//
// # Ownership
//
// Whoever holds an *FD owns the descriptor: it closes it (Close) or hands
// it on (a constructor documented to "take" it, or Disown for code that
// wants a bare int). The raw number ([FD.Int]) is valid only while the
// owner is open; code that stores it must not outlive the owner. A nil
// *FD is "no descriptor": Int returns -1 and Close does nothing, so a
// field "kick *fd.FD // nil when none" needs no separate flag.
//
// An FD that becomes unreachable while still open is a leak: the runtime
// cleanup registered by [New] closes it, and, while [TraceLeaks] is on,
// reports it with the stack that created it, so tests can fail on leaks.
//
// # Decisions
//
//   - Close is safe against double close and against concurrent use by
//     this package's own operations (EventFD.Signal, Drain): those hold a
//     reference for the length of their one system call, and the last
//     reference closes the descriptor, so a number is never closed twice
//     nor written after it was reused.
//   - Adopted eventfds ([NewEventFDFrom]) are switched to O_NONBLOCK:
//     Signal must never wait for room in a counter the other side filled,
//     and QEMU, Cloud Hypervisor and DPDK create theirs non-blocking
//     anyway.
//   - Received descriptors are close-on-exec (MSG_CMSG_CLOEXEC), so a
//     child process never inherits a guest's memory or eventfds.
//   - The package has no unsafe code: x/sys/unix does the system calls.
package fd
