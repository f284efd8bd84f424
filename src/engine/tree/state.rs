//! The directory's records in the process (memory and embedded engines): what the Redis
//! engine keeps under its `{kt}` hash tag, as plain maps. Pure state: the memory engine locks
//! it, journals what changes, and waits for the commit before anyone reads the change.

use std::collections::{BTreeMap, HashMap};

use super::batch::{Pending, TreeBatch, TreeSnapshot, TreeWrite};
use crate::protocol::UserId;

#[derive(Default)]
pub struct TreeState {
    /// akd's azks and tree nodes by their key.
    nodes: HashMap<Vec<u8>, Vec<u8>>,
    /// akd's value states by label, in epoch order.
    states: HashMap<Vec<u8>, Vec<Vec<u8>>>,
    /// The root hash of every epoch, the first epoch's at 0.
    roots: Vec<[u8; 32]>,
    /// Registrations not yet published, with their keys.
    pending: BTreeMap<UserId, String>,
    /// Generated secrets by name (`Secret`).
    secrets: HashMap<String, String>,
}

impl TreeState {
    pub fn nodes(&self, keys: &[Vec<u8>]) -> Vec<Option<Vec<u8>>> {
        keys.iter().map(|key| self.nodes.get(key).cloned()).collect()
    }

    pub fn states(&self, labels: &[Vec<u8>]) -> Vec<Vec<Vec<u8>>> {
        labels.iter().map(|label| self.states.get(label).cloned().unwrap_or_default()).collect()
    }

    /// What of `batch` is to be written: all of an epoch's; of an initial write, what is
    /// absent.
    pub fn fresh(&self, batch: TreeBatch, write: &TreeWrite) -> TreeBatch {
        match write {
            TreeWrite::Epoch { .. } => batch,
            TreeWrite::Initial => TreeBatch {
                nodes: batch.nodes.into_iter().filter(|(key, _)| !self.nodes.contains_key(key)).collect(),
                states: batch.states,
            },
        }
    }

    pub fn apply(&mut self, batch: TreeBatch) {
        self.nodes.extend(batch.nodes);
        for (label, _epoch, value) in batch.states {
            self.states.entry(label).or_default().push(value);
        }
    }

    pub fn rooted(&self) -> u64 {
        self.roots.len() as u64
    }

    /// The roots of the epochs `from..=to` that exist.
    pub fn roots(&self, from: u64, to: u64) -> Vec<[u8; 32]> {
        let start = from.max(1) as usize - 1;
        let end = (to as usize).min(self.roots.len());
        self.roots.get(start..end).map(<[_]>::to_vec).unwrap_or_default()
    }

    /// Whether `epoch`'s root is new: the next epoch only; the same root again is nothing new;
    /// an epoch already recorded with another root is an error (a fork, never written).
    pub fn check_root(&self, epoch: u64, hash: &[u8; 32]) -> Result<bool, String> {
        match epoch.checked_sub(1).map(|i| self.roots.get(i as usize)) {
            Some(Some(known)) if known == hash => Ok(false),
            Some(Some(_)) => Err(format!("epoch {epoch} has another root already")),
            Some(None) if epoch == self.rooted() + 1 => Ok(true),
            _ => Err(format!("epoch {epoch} does not follow the last rooted epoch {}", self.rooted())),
        }
    }

    /// Records `epoch`'s root (see `check_root`): true if it is new.
    pub fn add_root(&mut self, epoch: u64, hash: [u8; 32]) -> Result<bool, String> {
        let new = self.check_root(epoch, &hash)?;
        if new {
            self.roots.push(hash);
        }
        Ok(new)
    }

    pub fn add_pending(&mut self, user: UserId, public_key: String) {
        self.pending.insert(user, public_key);
    }

    pub fn pending(&self, max: usize) -> Vec<Pending> {
        let entries = self.pending.iter().take(max);
        entries.map(|(user, key)| Pending { user: user.clone(), public_key: key.clone() }).collect()
    }

    pub fn is_pending(&self, user: &UserId) -> bool {
        self.pending.contains_key(user)
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn published(&mut self, users: &[UserId]) {
        for user in users {
            self.pending.remove(user);
        }
    }

    pub fn secret(&self, name: &str) -> Option<&String> {
        self.secrets.get(name)
    }

    pub fn set_secret(&mut self, name: &str, value: String) {
        self.secrets.insert(name.to_owned(), value);
    }
}

impl TreeState {
    /// The state the data file held.
    pub fn restore(snapshot: TreeSnapshot) -> Result<Self, String> {
        let mut state = TreeState { nodes: snapshot.nodes.into_iter().collect(), ..TreeState::default() };
        // In the file's order: by label, then epoch.
        for (label, _epoch, value) in snapshot.states {
            state.states.entry(label).or_default().push(value);
        }
        for (epoch, hash) in snapshot.roots {
            let hash = <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| format!("the root of epoch {epoch}"))?;
            state.add_root(epoch, hash)?;
        }
        state.pending = snapshot.pending.into_iter().collect();
        state.secrets = snapshot.secrets.into_iter().collect();
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_follow_one_another_and_never_change() {
        let mut state = TreeState::default();
        assert!(state.add_root(2, [2; 32]).is_err(), "no gap");
        assert!(state.add_root(1, [1; 32]).unwrap());
        assert!(!state.add_root(1, [1; 32]).unwrap(), "the same root again is nothing new");
        assert!(state.add_root(1, [9; 32]).is_err(), "no fork");
        assert!(state.add_root(2, [2; 32]).unwrap());
        assert_eq!(state.roots(1, 5), vec![[1; 32], [2; 32]]);
        assert_eq!(state.roots(2, 2), vec![[2; 32]]);
        assert!(state.roots(3, 4).is_empty());
        assert!(state.add_root(0, [0; 32]).is_err());
    }

    #[test]
    fn an_initial_write_keeps_what_exists() {
        let mut state = TreeState::default();
        let batch = |value: &[u8]| TreeBatch { nodes: vec![(b"k".to_vec(), value.to_vec())], states: vec![] };
        let fresh = state.fresh(batch(b"one"), &TreeWrite::Initial);
        state.apply(fresh);
        assert!(state.fresh(batch(b"two"), &TreeWrite::Initial).nodes.is_empty());
        assert_eq!(state.nodes(&[b"k".to_vec()]), vec![Some(b"one".to_vec())]);
        let epoch = state.fresh(batch(b"three"), &TreeWrite::Epoch { epoch: 1, holder: String::new() });
        state.apply(epoch);
        assert_eq!(state.nodes(&[b"k".to_vec()]), vec![Some(b"three".to_vec())]);
    }
}
