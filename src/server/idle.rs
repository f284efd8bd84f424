//! Requests in progress on one connection, so that the accept loop can tell an idle connection
//! (none in progress) from a busy one on HTTP/1 and HTTP/2 alike. A request counts from the
//! moment hyper hands it to the router until its response body has been sent (or dropped).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use hyper::body::{Frame, SizeHint};
use tokio::sync::watch;

/// The count of requests in progress, watched by the connection's task.
#[derive(Clone)]
pub(super) struct Requests(Arc<watch::Sender<usize>>);

impl Requests {
    pub(super) fn new() -> (Requests, watch::Receiver<usize>) {
        let (count, watching) = watch::channel(0);
        (Requests(Arc::new(count)), watching)
    }

    /// Counts a request until the returned guard drops.
    pub(super) fn start(&self) -> InFlight {
        self.0.send_modify(|n| *n += 1);
        InFlight(self.clone())
    }
}

/// One request in progress.
pub(super) struct InFlight(Requests);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.0.send_modify(|n| *n -= 1);
    }
}

/// A response body that keeps its request counted until hyper has sent it or let it go.
pub(super) struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl Tracked {
    pub(super) fn new(body: Body, in_flight: InFlight) -> Tracked {
        Tracked { body, _in_flight: in_flight }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
