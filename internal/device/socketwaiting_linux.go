package device

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// socketWaiting reports whether bytes are waiting unread in c's socket (the TCP connection beneath TLS),
// from the kernel's count of its receive queue (SIOCINQ).
func socketWaiting(c net.Conn) bool {
	type netConner interface{ NetConn() net.Conn }
	if t, ok := c.(netConner); ok {
		c = t.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var n int
	cerr := raw.Control(func(fd uintptr) {
		n, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	})
	return cerr == nil && err == nil && n > 0
}
