//! Listening sockets: bound with socket2 on the thread that starts a node (so "address in
//! use" is reported before any shard starts), then handed to a shard's executor, which accepts
//! on them and serves each accepted connection.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future::or;
use socket2::{Domain, Protocol, Socket, Type};

use crate::constants::LISTEN_BACKLOG_MAX;
use crate::net::connection;
use crate::runtime::executors::StartError;
use crate::runtime::shard::Shard;

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
    bind().map_err(|error| StartError::Io {
        what: format!("cannot listen on {addr} (is another process using it? pick another port)"),
        error,
    })
}

/// The address a bound socket listens on.
pub fn local_addr(socket: &Socket) -> SocketAddr {
    socket
        .local_addr()
        .ok()
        .and_then(|addr| addr.as_socket())
        .expect("a bound TCP socket has an address")
}

/// Runs on a shard's executor: starts accepting on each of `sockets`.
pub fn serve_listeners(shard: Rc<Shard>, sockets: impl IntoIterator<Item = Socket>) {
    for socket in sockets {
        // SAFETY: the descriptor comes from a listening socket this shard alone now owns.
        let listener = unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) };
        glommio::spawn_local(accept_loop(shard.clone(), listener)).detach();
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: glommio::net::TcpListener) {
    loop {
        let accepted = or(async { Some(listener.accept().await) }, async {
            shard.stopping().await;
            None
        });
        match accepted.await {
            None => return,
            Some(Ok(stream)) => connection::serve(shard.clone(), stream),
            // Out of descriptors or memory: the kernel keeps the connection queued; pause
            // instead of spinning on the same error.
            Some(Err(_)) => glommio::timer::sleep(Duration::from_millis(10)).await,
        }
    }
}
