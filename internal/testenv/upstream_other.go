//go:build !linux

package testenv

import "syscall"

func helperSysProcAttr() *syscall.SysProcAttr { return nil }
