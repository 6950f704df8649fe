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
// # Disk images (Cloud Hypervisor)
//
// WriteDisk (veloce-image disk) puts a built guest on a raw disk image that
// firmware boots without -kernel: a GPT (protective MBR, primary and backup
// headers) with one EFI system partition, FAT32, holding /veloce/vmlinuz,
// /veloce/initramfs.cpio.gz, a Boot Loader Spec type 1 entry
// /loader/entries/veloce.conf (title, linux, initrd, options: the whole
// kernel command line, guestinit's veloce.cfg included) and
// /loader/loader.conf (default veloce.conf, timeout 0). Cloud Hypervisor's
// rust-hypervisor-firmware reads these entries itself; for every other
// UEFI firmware EFI/BOOT/BOOTX64.EFI is systemd-boot (Debian's
// systemd-boot-efi), which reads the same entries. Tests boot the disk
// under QEMU with OVMF in its place (vmtest.DiskBoot), since neither Cloud
// Hypervisor nor its firmware runs here (no KVM). With Cloud Hypervisor:
//
//	veloce-image disk --out veloce.img --run "/bin/veloce-perf ..."
//	cloud-hypervisor --firmware hypervisor-fw --disk path=veloce.img \
//		--cpus boot=1 --memory size=512M,shared=on \
//		--net vhost_user=true,socket=/run/veloce/vm0.sock,vhost_mode=client \
//		--serial tty --console off
//
// (vhost_mode=client: Cloud Hypervisor connects to veloced --vhost-user
// PATH; shared=on because the daemon maps guest memory.) The entry's
// console=ttyS0 is the serial port --serial tty shows; the firmware adds
// any --cmdline in front of the entry's options. rust-hypervisor-firmware
// reads at most 4 KiB of loader.conf and of the entry and needs FAT32 to
// have 65525 clusters or more, so the ESP is never under 64 MiB.
//
// The GPT and FAT32 are written by github.com/diskfs/go-diskfs; two of its
// v1.9.4 slips are worked around and pinned by tests that check the
// image with fsck.fat and mtools (a FAT one or two entries short at some
// sizes; ".." entries naming the root's cluster instead of 0).
//
// Why not u-root's mkuimage: it builds a whole userland from Go sources; a
// Veloce guest needs one init, a few modules and a few binaries, and the
// newc cpio format is small enough to write in a page (cpio.go).
package images
