// Package control is veloced's control API, the one package velocectl and
// the daemon share: the request and response types, the HTTP paths, the
// error format, a [Client] and a [Handler] that serves a [Service].
//
// The API is HTTP/1.1 with JSON bodies over a unix socket (veloced
// --control PATH, default [DefaultSocket]). Every path sits under a
// version prefix ([Prefix], "/v1/"); a change that breaks a client gets a
// new prefix. The JSON field names of the response types are a contract
// (DESIGN.md, "Contracts"): scripts read `velocectl ports -o json` and
// `velocectl streams -o json`, so a field is added, never renamed.
//
// Errors are a JSON object {"error": "..."} ([ErrorBody]) with a fitting
// HTTP status: 404 for an unknown path or object, 405 for a wrong method,
// 400 for a bad request, 500 for a failure in the daemon. [Client]
// returns them as [*APIError], which matches [ErrNotFound],
// [ErrBadRequest] and [ErrMethodNotAllowed] under errors.Is; a daemon
// that cannot be reached is an [*UnreachableError] (errors.Is
// [ErrUnreachable]), which says to check that veloced runs.
//
// # Adding an endpoint
//
// An endpoint is one path constant, one method on [Service], one route in
// [Handler] and one method on [Client], all in this package; the daemon
// (backend.Daemon) implements the Service method. Endpoints that change
// the daemon (add-port, del-port, log-level, migrate) take a JSON request
// body and use POST or DELETE; [Client.do] already carries a body, and a
// Service method reports a missing object with an error wrapping
// [ErrNotFound] (404) and a bad request with [ErrBadRequest] (400).
//
// The package imports nothing of the project, so velocectl links neither
// the vhost-user layer nor the runtime.
package control
