package control

import (
	"context"
	"net/http"
)

// The administration endpoints: they change the daemon, so they are POST
// with a JSON body (GET PathLogLevel only shows the level). A daemon
// serves them when its Service also implements AdminService.
const (
	// PathAddPort creates and starts a port (POST AddPortRequest):
	// PortInfo of the new port.
	PathAddPort = Prefix + "ports/add"
	// PathDelPort stops and removes a port (POST DelPortRequest):
	// PortInfo of the port as it was last.
	PathDelPort = Prefix + "ports/del"
	// PathLogLevel shows (GET) or sets (POST LogLevelRequest) the
	// daemon's log level: LogLevelInfo.
	PathLogLevel = Prefix + "log-level"
)

// AdminService is what a daemon implements, beside Service, to be
// administered at run time (velocectl add-port, del-port, log-level).
// Errors map to statuses as Service's do: a duplicate or malformed
// request wraps ErrBadRequest, an unknown port ErrNotFound.
type AdminService interface {
	// AddPort creates and starts a port, as --vhost-user (or, with
	// Client, --vhost-user-client) would have at start.
	AddPort(ctx context.Context, req AddPortRequest) (PortInfo, error)
	// DelPort stops a port: its frontend is disconnected, its sessions
	// released and (in server mode) its socket removed.
	DelPort(ctx context.Context, req DelPortRequest) (PortInfo, error)
	// LogLevel returns the daemon's log level.
	LogLevel(ctx context.Context) (LogLevelInfo, error)
	// SetLogLevel sets the daemon's log level and returns it.
	SetLogLevel(ctx context.Context, req LogLevelRequest) (LogLevelInfo, error)
}

// AddPortRequest is PathAddPort's body.
type AddPortRequest struct {
	// Name identifies the port; it must be new.
	Name string `json:"name"`
	// Socket is the vhost-user socket's absolute path; no other port may
	// use it.
	Socket string `json:"socket"`
	// Client makes the daemon connect to a frontend listening on Socket
	// instead of listening itself.
	Client bool `json:"client,omitempty"`
	// Queues is the most queue pairs the guest may use; 0: the daemon's
	// default (veloced --queues).
	Queues int `json:"queues,omitempty"`
}

// DelPortRequest is PathDelPort's body.
type DelPortRequest struct {
	// Name is the port to remove.
	Name string `json:"name"`
}

// LogLevelRequest is PathLogLevel's POST body.
type LogLevelRequest struct {
	// Level is debug, info, warn or error (slog's names, which also
	// take an offset such as "info+2").
	Level string `json:"level"`
}

// LogLevelInfo is PathLogLevel's answer.
type LogLevelInfo struct {
	// Level is the daemon's level, as slog names it (DEBUG, INFO, WARN,
	// ERROR).
	Level string `json:"level"`
}

func init() {
	extensions = append(extensions, func(mux *http.ServeMux, s Service) {
		a, ok := s.(AdminService)
		if !ok {
			return
		}
		Post(mux, PathAddPort, a.AddPort)
		Post(mux, PathDelPort, a.DelPort)
		// One path, two methods: GET shows, POST sets.
		getLevel, setLevel := http.NewServeMux(), http.NewServeMux()
		Get(getLevel, PathLogLevel, a.LogLevel)
		Post(setLevel, PathLogLevel, a.SetLogLevel)
		mux.HandleFunc(PathLogLevel, func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost {
				setLevel.ServeHTTP(w, r)
				return
			}
			getLevel.ServeHTTP(w, r)
		})
	})
}

// AddPort creates and starts a port (POST PathAddPort).
func (c *Client) AddPort(ctx context.Context, req AddPortRequest) (PortInfo, error) {
	var out PortInfo
	return out, c.do(ctx, http.MethodPost, PathAddPort, req, &out)
}

// DelPort stops and removes a port (POST PathDelPort).
func (c *Client) DelPort(ctx context.Context, req DelPortRequest) (PortInfo, error) {
	var out PortInfo
	return out, c.do(ctx, http.MethodPost, PathDelPort, req, &out)
}

// LogLevel returns the daemon's log level (GET PathLogLevel).
func (c *Client) LogLevel(ctx context.Context) (LogLevelInfo, error) {
	var out LogLevelInfo
	return out, c.do(ctx, http.MethodGet, PathLogLevel, nil, &out)
}

// SetLogLevel sets the daemon's log level (POST PathLogLevel).
func (c *Client) SetLogLevel(ctx context.Context, req LogLevelRequest) (LogLevelInfo, error) {
	var out LogLevelInfo
	return out, c.do(ctx, http.MethodPost, PathLogLevel, req, &out)
}
