//! Who is asking, as a request extractor: the client's address prefix and its place under the
//! connection caps.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use ipnet::IpNet;

use crate::server::connections::{ConnectionSlot, OverCapacity};
use crate::server::state::AppState;

/// Who is asking: the client's address (the TCP peer, or what a trusted proxy forwarded) and,
/// for a socket, its place under the connection caps (`server::connections` marks both).
pub(crate) struct Client {
    /// The client's address prefix (`rate.address_prefix`): what every per-address budget and
    /// every stored byte of the client is counted against.
    pub(crate) prefix: IpNet,
    pub(crate) over_capacity: bool,
    pub(crate) slot: Option<ConnectionSlot>,
}

impl FromRequestParts<AppState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let address = match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(peer)) => state.trusted_proxies.client(*peer, &parts.headers),
            None => IpAddr::from([0, 0, 0, 0]), // not served by the accept loop (in-process tests)
        };
        Ok(Client {
            prefix: state.settings.rate.address_prefix.of(address),
            over_capacity: parts.extensions.get::<OverCapacity>().is_some(),
            slot: parts.extensions.get::<ConnectionSlot>().cloned(),
        })
    }
}
