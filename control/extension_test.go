package control

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"testing"
)

type echoReq struct {
	Name string `json:"name"`
}

type echoService struct{ Service }

func (echoService) Echo(_ context.Context, r echoReq) (echoReq, error) {
	if r.Name == "" {
		return r, errors.New("empty name: " + ErrBadRequest.Error())
	}
	return echoReq{Name: "hello " + r.Name}, nil
}

// TestExtensionsAddPostRoutes: an extension routes its POST endpoint
// only for a Service that implements it; bodies decode strictly.
func TestExtensionsAddPostRoutes(t *testing.T) {
	old := extensions
	t.Cleanup(func() { extensions = old })
	extensions = append(extensions, func(mux *http.ServeMux, s Service) {
		if e, ok := s.(echoService); ok {
			Post(mux, Prefix+"echo", e.Echo)
		}
	})
	sock := filepath.Join(t.TempDir(), "c.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: Handler(echoService{})}
	go srv.Serve(ln)
	defer srv.Close()
	c := NewClient(sock)
	var out echoReq
	if err := c.do(context.Background(), http.MethodPost, Prefix+"echo", echoReq{Name: "vm0"}, &out); err != nil || out.Name != "hello vm0" {
		t.Errorf("POST echo = %+v, %v", out, err)
	}
	if err := c.do(context.Background(), http.MethodGet, Prefix+"echo", nil, &out); !errors.Is(err, ErrMethodNotAllowed) {
		t.Errorf("GET echo = %v, want ErrMethodNotAllowed", err)
	}
	if err := c.do(context.Background(), http.MethodPost, Prefix+"echo", map[string]int{"bogus": 1}, &out); !errors.Is(err, ErrBadRequest) {
		t.Errorf("POST with an unknown field = %v, want ErrBadRequest", err)
	}
}
