//go:build !linux

package device

import "net"

// socketWaiting cannot see into the socket off Linux: the keep-alive rule then goes by what was read alone
// (docs/architecture.md, "Keep-alive: a late PINGRESP is not a dead connection"), so that the device SDK,
// the simulator and the CLI still build for an operator's macOS or Windows machine.
func socketWaiting(net.Conn) bool { return false }
