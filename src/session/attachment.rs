//! A session's place in the relay, owned by one guard from admission until the session ends
//! (also when the upgrade never completes): registered in this replica's hub, then attached
//! to the engine (the user's doorbell listened to, a connection generation claimed).
//!
//! Who does what: the guard calls `hub.register` and `engine.attach`; on drop it calls
//! `engine.detach`, which takes the mailbox out of the hub (`hub.unregister`) and, when that was
//! the user's last session here, lets the engine stop listening for the user. The hub half of
//! the undo sits in the engine because only the engine knows whether `unregister` left the
//! user without a local session, and so whether to unsubscribe.

use std::sync::Arc;

use crate::AppState;
use crate::engine::{Engine, Unavailable};
use crate::hub::Mailbox;
use crate::protocol::UserId;

/// A session registered in the hub and attached to the engine; detached when dropped.
pub struct Attached {
    engine: Engine,
    mailbox: Arc<Mailbox>,
}

impl Attached {
    /// Makes a new session the user's live connection. Until `engine.attach` succeeds an older
    /// connection of the user keeps working; if it fails, dropping the guard gives it back.
    pub(super) async fn attach(state: &AppState, user: &UserId) -> Result<Attached, Unavailable> {
        let mailbox = state.hub.register(user);
        let attached = Attached { engine: state.engine.clone(), mailbox };
        state.engine.attach(&attached.mailbox).await?;
        Ok(attached)
    }

    pub(super) fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.engine.detach(&self.mailbox);
    }
}
