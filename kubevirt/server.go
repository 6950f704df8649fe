package kubevirt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/veloce-io/veloce/kubevirt/hookapi/info"
	"github.com/veloce-io/veloce/kubevirt/hookapi/v1alpha2"
	"github.com/veloce-io/veloce/kubevirt/hookapi/v1alpha3"
)

// HookName is the name the sidecar gives virt-launcher in Info.
const HookName = "veloce"

// OnDefineDomainHookPoint is KubeVirt's name for the hook point.
const OnDefineDomainHookPoint = "OnDefineDomain"

// Versions are the Callbacks versions the sidecar serves, newest first.
var Versions = []string{"v1alpha3", "v1alpha2"}

// NewGRPCServer returns a gRPC server with the hook services registered:
// Info, and Callbacks v1alpha2 and v1alpha3 backed by p.
func NewGRPCServer(p *Plugin) *grpc.Server {
	s := grpc.NewServer()
	info.RegisterInfoServer(s, infoServer{})
	v1alpha2.RegisterCallbacksServer(s, v1alpha2Server{p: p})
	v1alpha3.RegisterCallbacksServer(s, v1alpha3Server{p: p})
	return s
}

// Listen removes a stale socket at path and listens there (virt-launcher
// finds sidecars by their sockets in HookSocketDir).
func Listen(path string) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale hook socket: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen for virt-launcher: %w (is %s the hook-sidecar volume KubeVirt mounts?)", err, path)
	}
	return l, nil
}

type infoServer struct{ info.UnimplementedInfoServer }

func (infoServer) Info(context.Context, *info.InfoParams) (*info.InfoResult, error) {
	return &info.InfoResult{Name: HookName, Versions: Versions,
		HookPoints: []*info.HookPoint{{Name: OnDefineDomainHookPoint, Priority: 0}}}, nil
}

func grpcErr(err error) error {
	if errors.Is(err, ErrBadDomain) || errors.Is(err, ErrBadVMI) || errors.Is(err, ErrModel) {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return status.Error(codes.Unavailable, err.Error())
}

type v1alpha2Server struct {
	v1alpha2.UnimplementedCallbacksServer
	p *Plugin
}

func (s v1alpha2Server) OnDefineDomain(ctx context.Context, in *v1alpha2.OnDefineDomainParams) (*v1alpha2.OnDefineDomainResult, error) {
	out, err := s.p.OnDefineDomain(ctx, in.GetDomainXML(), in.GetVmi())
	if err != nil {
		return nil, grpcErr(err)
	}
	return &v1alpha2.OnDefineDomainResult{DomainXML: out}, nil
}

func (v1alpha2Server) PreCloudInitIso(_ context.Context, in *v1alpha2.PreCloudInitIsoParams) (*v1alpha2.PreCloudInitIsoResult, error) {
	return &v1alpha2.PreCloudInitIsoResult{CloudInitNoCloudSource: in.GetCloudInitNoCloudSource(), CloudInitData: in.GetCloudInitData()}, nil
}

type v1alpha3Server struct {
	v1alpha3.UnimplementedCallbacksServer
	p *Plugin
}

func (s v1alpha3Server) OnDefineDomain(ctx context.Context, in *v1alpha3.OnDefineDomainParams) (*v1alpha3.OnDefineDomainResult, error) {
	out, err := s.p.OnDefineDomain(ctx, in.GetDomainXML(), in.GetVmi())
	if err != nil {
		return nil, grpcErr(err)
	}
	return &v1alpha3.OnDefineDomainResult{DomainXML: out}, nil
}

func (v1alpha3Server) PreCloudInitIso(_ context.Context, in *v1alpha3.PreCloudInitIsoParams) (*v1alpha3.PreCloudInitIsoResult, error) {
	return &v1alpha3.PreCloudInitIsoResult{CloudInitNoCloudSource: in.GetCloudInitNoCloudSource(), CloudInitData: in.GetCloudInitData()}, nil
}

func (s v1alpha3Server) Shutdown(ctx context.Context, _ *v1alpha3.ShutdownParams) (*v1alpha3.ShutdownResult, error) {
	if err := s.p.Shutdown(ctx); err != nil {
		return nil, grpcErr(err)
	}
	return &v1alpha3.ShutdownResult{}, nil
}
