// Package images builds the guests that Veloce's tests and demos boot.
//
// A guest is two files: a Debian kernel (vmlinuz, from the
// linux-image-<flavor> package, fetched with apt-get download and cached) and
// an initramfs whose /init is the project's own static Go program
// (cmd/veloce-init, logic in package guestinit). The initramfs carries the
// kernel modules the guest needs (by default virtio_pci and virtio_net and
// everything they depend on, resolved from each module's .modinfo), busybox
// when the host has Debian's busybox-static, and any extra files the caller
// adds: the project's static binaries, test binaries built with go test -c.
//
// Typical use from a test or a command:
//
//	k, err := images.EnsureKernel(ctx, images.KernelOptions{Flavor: "cloud-amd64"})
//	...
//	b := images.NewInitramfs(k)
//	b.AddFile("/bin/veloce-perf", "bin/veloce-perf", 0o755)
//	err = b.WriteFile("initramfs.cpio.gz", initBinary)
//
// What is cached: $VELOCE_CACHE (default $XDG_CACHE_HOME/veloce, else
// ~/.cache/veloce) holds kernel/<package>/ (the extracted Debian package)
// and debs/. Everything is idempotent: a second EnsureKernel is a stat.
//
// Why not u-root's mkuimage: it builds a whole userland from Go sources; a
// Veloce guest needs one init, a few modules and a few binaries, and the
// newc cpio format is small enough to write in a page (cpio.go).
package images
