package stress

import (
	"errors"

	"udm/daemon/api"
)

// The control API as the torture test uses it: the daemon's own client.

type apiClient = api.Client

type checkerSettings = api.CheckerSettings

type daemonInfo = api.DaemonInfo

func newClient(sock string) *apiClient { return api.NewClient(sock) }

// apiErrno is the errno a daemon's error reply carries ("" if err is not
// an error reply: the call did not get an answer).
func apiErrno(err error) (string, bool) {
	var ae *api.APIError
	if errors.As(err, &ae) {
		if ae.Errno == "" {
			return "E?", true
		}
		return ae.Errno, true
	}
	return "", false
}

// envSocket is the environment variable the CLI reads; the daemon the
// test starts must not find a user's socket through it.
const envSocket = api.Env

func createReq(name, table string) api.CreateRequest {
	return api.CreateRequest{Name: name, Table: table}
}
