//! Listening sockets: bound with socket2 on the thread that starts a node (so "address in
//! use" is reported before any shard starts), then handed to a shard's executor, which accepts
//! on them and serves each accepted connection.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future::or;
use rustls::ServerConfig;
use socket2::{Domain, Protocol, Socket, Type};

use crate::constants::LISTEN_BACKLOG_MAX;
use crate::core::auth::AuthSecret;
use crate::net::connection;
use crate::net::transport::Access;
use crate::runtime::config::ConfigError;
use crate::runtime::executors::StartError;
use crate::runtime::shard::Shard;
use crate::runtime::stall::spawn_timed;

/// A listening TCP socket on `addr`; `reuse_port` lets every shard listen on the same port.
pub fn listen(addr: SocketAddr, reuse_port: bool) -> Result<Socket, StartError> {
    let bind = || -> io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(reuse_port)?;
        // Inherited by accepted sockets: replies must not wait for Nagle.
        socket.set_nodelay(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG_MAX)?;
        Ok(socket)
    };
    bind().map_err(|error| listen_error(addr, error))
}

fn listen_error(addr: SocketAddr, error: io::Error) -> StartError {
    match error.kind() {
        io::ErrorKind::AddrInUse => StartError::Config(ConfigError::Ports(format!(
            "port {} is already in use on {} by another process (another trove node?); stop it or pick another --port / --shard-port-base",
            addr.port(),
            addr.ip()
        ))),
        io::ErrorKind::AddrNotAvailable => StartError::Config(ConfigError::Ports(format!(
            "{} is not an address of this host; give --listen one of its addresses (`ip -br addr`), or 127.0.0.1",
            addr.ip()
        ))),
        _ => StartError::Io {
            what: format!("cannot listen on {addr}"),
            error,
        },
    }
}

/// Fails when another process already listens on `addr`. SO_REUSEPORT would let the node's
/// shared listeners join that process's group silently, and the kernel would then split new
/// clients between two nodes with separate state; a socket bound without SO_REUSEPORT cannot
/// share the port, so binding one (and closing it at once) tells. SO_REUSEADDR stays on, so
/// connections of a previous run left in TIME_WAIT do not count.
pub fn probe_port_free(addr: SocketAddr) -> Result<(), StartError> {
    let probe = || -> io::Result<()> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())
    };
    probe().map_err(|error| listen_error(addr, error))
}

/// The address a bound socket listens on.
pub fn local_addr(socket: &Socket) -> SocketAddr {
    socket
        .local_addr()
        .ok()
        .and_then(|addr| addr.as_socket())
        .expect("a bound TCP socket has an address")
}

/// Runs on a shard's executor: starts accepting on each of `sockets`. With TLS or a secret,
/// every connection must pass the handshakes before it is read.
pub fn serve_listeners(
    shard: Rc<Shard>,
    sockets: impl IntoIterator<Item = Socket>,
    secret: Option<AuthSecret>,
    tls: Option<Arc<ServerConfig>>,
    link_tls: Option<Arc<rustls::ClientConfig>>,
) {
    shard.set_link_connector(crate::net::link::connector(secret.clone(), link_tls));
    let access = Rc::new(Access::new(secret, tls));
    for socket in sockets {
        // SAFETY: the descriptor comes from a listening socket this shard alone now owns.
        let listener = unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) };
        spawn_timed(accept_loop(shard.clone(), listener, access.clone())).detach();
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: glommio::net::TcpListener, access: Rc<Access>) {
    loop {
        let accepted = or(async { Some(listener.accept().await) }, async {
            shard.stopping().await;
            None
        });
        match accepted.await {
            None => return,
            Some(Ok(stream)) => connection::serve(shard.clone(), stream, access.clone()),
            // Out of descriptors or memory: the kernel keeps the connection queued; pause
            // instead of spinning on the same error.
            Some(Err(_)) => glommio::timer::sleep(Duration::from_millis(10)).await,
        }
    }
}
