//! Ports for the processes a test starts: always free ones the OS picked, never fixed
//! numbers, so tests run in parallel.

use std::net::TcpListener;

/// A port nothing listened on a moment ago. Another process may take it before ours binds, so
/// whoever starts a server on it must retry on another port when that happens.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A port where connections are refused, for as long as this guard lives: bound (so no other
/// test can take it) but not listening. Stands in for "a server that is not there" without a
/// fixed port number.
pub struct ClosedPort {
    pub port: u16,
    _socket: tokio::net::TcpSocket,
}

impl ClosedPort {
    pub fn bind() -> ClosedPort {
        // No SO_REUSEADDR: a later bind of the port fails even for a server that sets it.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        ClosedPort { port, _socket: socket }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
