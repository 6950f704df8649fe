// Package hostile is the hostile-frontend suite (issue "Hardening"): it
// starts a real veloced with two vhost-user ports and attacks port 1, one
// attack class per subtest of TestHostileFrontend, the way a compromised
// or buggy VMM would. After each class the well-behaved frontend on port 2
// must still get its ARP answered, the daemon must be alive, the control
// API must answer in bounded time, port 1 must serve a fresh well-behaved
// frontend, and the daemon must not have kept descriptors of the attacker.
// TestIdleCPU checks that idle ports cost (almost) no CPU. FuzzSequence
// drives a vhostuser.NetDevice in process with sequences of messages.
//
// The attacks and the well-behaved frontend live in
// vhostuser/vhostusertest (hostile*.go) so other suites can reuse them.
//
//	go test -count=1 -v ./integration/hostile/
//
// The suite needs Linux (memfd, SCM_RIGHTS) and the Go toolchain that
// runs it (it builds veloced and velocectl); under CI=true a missing
// requirement fails instead of skipping. -short skips it.
package hostile
