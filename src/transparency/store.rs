//! akd's storage (`akd::storage::Database`) over the engine: records become bytes
//! (`codec`) kept by whichever engine runs (`engine::tree`). akd writes an epoch as one
//! batch, the azks last; it goes to the engine as one write, which the engine stores all or
//! nothing (and, on Redis, only for the lease holder on top of the epoch before).
//!
//! No cache: every read goes to the engine, so a replica that does not publish reads what the
//! publisher wrote, and akd's previous-value nodes keep a proof consistent with the epoch it
//! started at while the next one is written.

use std::collections::HashMap;

use akd::errors::StorageError;
use akd::storage::types::{DbRecord, KeyData, StorageType, ValueState, ValueStateRetrievalFlag};
use akd::storage::{Database, DbSetState, Storable};
use akd::{AkdLabel, AkdValue};
use async_trait::async_trait;

use super::codec;
use crate::engine::Engine;
use crate::engine::tree::batch::{TreeBatch, TreeWrite};

#[derive(Clone)]
pub struct EngineStore {
    engine: Engine,
    /// The lease holder this store writes epochs for; `None`: a reader, which writes only the
    /// empty directory's records.
    holder: Option<String>,
}

impl EngineStore {
    pub fn reader(engine: Engine) -> Self {
        Self { engine, holder: None }
    }

    pub fn publisher(engine: Engine, holder: String) -> Self {
        Self { engine, holder: Some(holder) }
    }

    async fn states(&self, label: &AkdLabel) -> Result<Vec<ValueState>, StorageError> {
        let lists = self.engine.tree_states(std::slice::from_ref(&label.0)).await.map_err(unavailable)?;
        let mut states = Vec::new();
        for bytes in lists.into_iter().flatten() {
            match codec::decode(&bytes).map_err(damaged)? {
                DbRecord::ValueState(state) => states.push(state),
                _ => return Err(damaged("a value state list holds another record")),
            }
        }
        states.sort_by_key(|state| state.epoch);
        Ok(states)
    }
}

fn unavailable(e: crate::engine::Unavailable) -> StorageError {
    StorageError::Connection(e.to_string())
}

fn damaged(e: impl std::fmt::Display) -> StorageError {
    StorageError::Other(format!("unreadable key directory record: {e}"))
}

fn not_found(what: impl std::fmt::Debug) -> StorageError {
    StorageError::NotFound(format!("{what:?}"))
}

/// The state `flag` picks from `states` (in epoch order), as akd's own in-memory store picks.
fn pick(states: &[ValueState], flag: ValueStateRetrievalFlag) -> Option<&ValueState> {
    match flag {
        ValueStateRetrievalFlag::MaxEpoch => states.last(),
        ValueStateRetrievalFlag::MinEpoch => states.first(),
        ValueStateRetrievalFlag::SpecificVersion(version) => states.iter().find(|s| s.version == version),
        ValueStateRetrievalFlag::SpecificEpoch(epoch) => states.iter().find(|s| s.epoch == epoch),
        ValueStateRetrievalFlag::LeqEpoch(epoch) => states.iter().rev().find(|s| s.epoch <= epoch),
    }
}

#[async_trait]
impl Database for EngineStore {
    async fn set(&self, record: DbRecord) -> Result<(), StorageError> {
        self.batch_set(vec![record], DbSetState::General).await
    }

    async fn batch_set(&self, records: Vec<DbRecord>, state: DbSetState) -> Result<(), StorageError> {
        let mut batch = TreeBatch::default();
        let mut epoch = None;
        for record in &records {
            match record {
                DbRecord::ValueState(value) => {
                    batch.states.push((value.username.0.clone(), value.epoch, codec::encode(record)));
                }
                DbRecord::Azks(azks) => {
                    epoch = Some(azks.latest_epoch);
                    batch.nodes.push((record.get_full_binary_id(), codec::encode(record)));
                }
                DbRecord::TreeNode(_) => batch.nodes.push((record.get_full_binary_id(), codec::encode(record))),
            }
        }
        let write = match (state, epoch, &self.holder) {
            (DbSetState::General, _, _) => TreeWrite::Initial,
            (DbSetState::TransactionCommit, Some(epoch), Some(holder)) => {
                TreeWrite::Epoch { epoch, holder: holder.clone() }
            }
            (DbSetState::TransactionCommit, None, _) => {
                return Err(StorageError::Transaction("an epoch without its azks".into()));
            }
            (DbSetState::TransactionCommit, _, None) => {
                return Err(StorageError::Transaction("this replica does not publish".into()));
            }
        };
        self.engine.tree_write(batch, write).await.map_err(unavailable)
    }

    async fn get<St: Storable>(&self, id: &St::StorageKey) -> Result<DbRecord, StorageError> {
        let mut found = self.batch_get::<St>(std::slice::from_ref(id)).await?;
        found.pop().ok_or_else(|| not_found(id))
    }

    async fn batch_get<St: Storable>(&self, ids: &[St::StorageKey]) -> Result<Vec<DbRecord>, StorageError> {
        if St::data_type() == StorageType::ValueState {
            // A value state's key is its label and epoch (akd's binary form: kind, epoch, label).
            let mut found = Vec::new();
            for id in ids {
                let key = St::get_full_binary_key_id(id);
                let (Some(epoch), Some(label)) = (key.get(1..9), key.get(9..)) else { continue };
                let epoch = u64::from_be_bytes(epoch.try_into().unwrap_or_default());
                let states = self.states(&AkdLabel(label.to_vec())).await?;
                found.extend(states.into_iter().filter(|s| s.epoch == epoch).map(DbRecord::ValueState));
            }
            return Ok(found);
        }
        let keys: Vec<Vec<u8>> = ids.iter().map(St::get_full_binary_key_id).collect();
        let values = self.engine.tree_nodes(&keys).await.map_err(unavailable)?;
        values.into_iter().flatten().map(|bytes| codec::decode(&bytes).map_err(damaged)).collect()
    }

    async fn get_user_data(&self, username: &AkdLabel) -> Result<KeyData, StorageError> {
        let states = self.states(username).await?;
        if states.is_empty() {
            return Err(not_found(username));
        }
        Ok(KeyData { states })
    }

    async fn get_user_state(
        &self,
        username: &AkdLabel,
        flag: ValueStateRetrievalFlag,
    ) -> Result<ValueState, StorageError> {
        let states = self.states(username).await?;
        pick(&states, flag).cloned().ok_or_else(|| not_found(username))
    }

    async fn get_user_state_versions(
        &self,
        usernames: &[AkdLabel],
        flag: ValueStateRetrievalFlag,
    ) -> Result<HashMap<AkdLabel, (u64, AkdValue)>, StorageError> {
        let labels: Vec<Vec<u8>> = usernames.iter().map(|label| label.0.clone()).collect();
        let lists = self.engine.tree_states(&labels).await.map_err(unavailable)?;
        let mut versions = HashMap::new();
        for (label, list) in usernames.iter().zip(lists) {
            let mut states = Vec::with_capacity(list.len());
            for bytes in list {
                if let DbRecord::ValueState(state) = codec::decode(&bytes).map_err(damaged)? {
                    states.push(state);
                }
            }
            states.sort_by_key(|state| state.epoch);
            if let Some(state) = pick(&states, flag) {
                versions.insert(label.clone(), (state.version, state.value.clone()));
            }
        }
        Ok(versions)
    }
}
