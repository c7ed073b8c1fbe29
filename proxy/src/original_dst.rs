//! The address a client meant to reach before iptables redirected its connection to the proxy
//! (`wasmesh-proxy init`'s `REDIRECT` rules): `SO_ORIGINAL_DST`, as Envoy's `original_dst`
//! listener filter reads it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

/// The original destination of an accepted TCP connection, from the connection tracking entry
/// of the NAT that redirected it. A connection that was not translated answers with its own
/// local address, or with `ENOENT` where the namespace tracks no connections.
pub fn original_dst(socket: &impl AsFd) -> io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(socket);
    let v6 = socket
        .local_addr()?
        .as_socket_ipv6()
        .is_some_and(|a| a.ip().to_ipv4_mapped().is_none());
    let addr = if v6 {
        socket.original_dst_v6()?
    } else {
        socket.original_dst_v4()?
    };
    addr.as_socket()
        .ok_or_else(|| io::Error::other("the original destination is not an IP address"))
}
