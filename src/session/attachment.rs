//! A session's place in the relay, owned by one guard from admission until the session ends
//! (also when the upgrade never completes): registered in this replica's hub, then attached
//! to the engine (the user's doorbell listened to, a connection generation claimed).
//!
//! Who does what: the guard alone registers (`hub.register`, then `engine.attach`) and undoes it
//! on drop (`hub.unregister`, then `engine.release` when that left the user without a session
//! on this replica, so the engine stops listening for the user's doorbell).

use std::sync::Arc;

use crate::engine::{Engine, Unavailable};
use crate::hub::{Hub, Mailbox};
use crate::protocol::UserId;
use crate::server::state::AppState;

/// A session registered in the hub and attached to the engine; detached when dropped.
pub struct Attached {
    hub: Arc<Hub>,
    engine: Engine,
    mailbox: Arc<Mailbox>,
}

impl Attached {
    /// Makes a new session the user's live connection. Until `engine.attach` succeeds an older
    /// connection of the user keeps working; if it fails, dropping the guard gives it back.
    pub(super) async fn attach(state: &AppState, user: &UserId) -> Result<Attached, Unavailable> {
        let mailbox = state.hub.register(user);
        let attached = Attached { hub: state.hub.clone(), engine: state.engine.clone(), mailbox };
        state.engine.attach(&attached.mailbox).await?;
        Ok(attached)
    }

    pub(super) fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if self.hub.unregister(&self.mailbox) {
            self.engine.release(&self.mailbox.user);
        }
    }
}
