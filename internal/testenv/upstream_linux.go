package testenv

import "syscall"

// helperSysProcAttr kills the helper if the test process dies without
// running its cleanup, so no orphan keeps serving credentials.
func helperSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
