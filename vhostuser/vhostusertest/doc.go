// Package vhostusertest provides fakes for testing code built on package
// vhostuser: a guest whose RAM is a real memfd mapped in the test process
// ([Guest]), the driver side of a split virtqueue laid out in it
// ([Driver]), and a frontend that speaks vhost-user over a socketpair
// ([Frontend]).
//
// Everything registers its cleanup with the testing.TB it is given.
package vhostusertest
