// Package hookapi holds KubeVirt's hook API (discovery service Info and
// the Callbacks services v1alpha2 and v1alpha3) as Go code generated from
// the .proto files beside it. The .proto files restate KubeVirt's wire
// contract (package names, field names and numbers); the Go code is
// regenerated with
//
//	go generate ./kubevirt/hookapi
//
// which needs protoc (Debian: protobuf-compiler) and protoc-gen-go
// v1.36.12 and protoc-gen-go-grpc v1.6.2 on PATH
// (go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
// google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2).
package hookapi

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative info/info.proto v1alpha2/callbacks.proto v1alpha3/callbacks.proto
