//! Ports for the processes a test starts: always free ones the OS picked, never fixed
//! numbers, so tests run in parallel.

use std::net::TcpListener;

/// A port nothing listened on a moment ago. Another process may take it before ours binds, so
/// whoever starts a server on it must retry on another port when that happens.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
