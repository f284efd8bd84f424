//! akd's stored records as compact bytes, for every engine's store: fixed-width big-endian
//! integers, 36-byte node labels (length in bits, then the 32 bytes), length-prefixed byte
//! strings. A tree node with its previous value is about 390 bytes, a value state about 130
//! plus the key. A record that does not read back whole is an error, never a guess.

use akd::storage::types::{DbRecord, ValueState};
use akd::tree_node::{TreeNode, TreeNodeWithPreviousValue};
use akd::{AzksValue, NodeLabel};

/// The first byte of every encoded record: its kind, and the format's version with it.
const AZKS: u8 = 1;
const NODE: u8 = 2;
const STATE: u8 = 4;

/// The bytes of `record`.
pub fn encode(record: &DbRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(400);
    match record {
        DbRecord::Azks(azks) => {
            out.push(AZKS);
            out.extend_from_slice(&azks.latest_epoch.to_be_bytes());
            out.extend_from_slice(&azks.num_nodes.to_be_bytes());
        }
        DbRecord::TreeNode(node) => {
            out.push(NODE);
            put_label(&mut out, &node.label);
            put_node(&mut out, &node.latest_node);
            match &node.previous_node {
                Some(previous) => {
                    out.push(1);
                    put_node(&mut out, previous);
                }
                None => out.push(0),
            }
        }
        DbRecord::ValueState(state) => {
            out.push(STATE);
            put_bytes(&mut out, &state.username.0);
            put_bytes(&mut out, &state.value.0);
            out.extend_from_slice(&state.version.to_be_bytes());
            out.extend_from_slice(&state.epoch.to_be_bytes());
            put_label(&mut out, &state.label);
        }
    }
    out
}

/// The record `bytes` hold.
pub fn decode(bytes: &[u8]) -> Result<DbRecord, String> {
    let mut r = Reader(bytes);
    let record = match r.u8()? {
        AZKS => DbRecord::Azks(DbRecord::build_azks(r.u64()?, r.u64()?)),
        NODE => {
            let label = r.label()?;
            let latest = r.node()?;
            let previous = match r.u8()? {
                0 => None,
                1 => Some(r.node()?),
                other => return Err(format!("previous-node flag {other}")),
            };
            DbRecord::TreeNode(TreeNodeWithPreviousValue { label, latest_node: latest, previous_node: previous })
        }
        STATE => {
            let username = r.bytes()?;
            let value = r.bytes()?;
            let (version, epoch) = (r.u64()?, r.u64()?);
            let label = r.label()?;
            let state: ValueState =
                DbRecord::build_user_state(username, value, version, label.label_len, label.label_val, epoch);
            DbRecord::ValueState(state)
        }
        kind => return Err(format!("record kind {kind}")),
    };
    if !r.0.is_empty() {
        return Err(format!("{} bytes after the record", r.0.len()));
    }
    Ok(record)
}

fn put_label(out: &mut Vec<u8>, label: &NodeLabel) {
    out.extend_from_slice(&label.label_len.to_be_bytes());
    out.extend_from_slice(&label.label_val);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_child(out: &mut Vec<u8>, child: &Option<NodeLabel>) {
    match child {
        Some(label) => {
            out.push(1);
            put_label(out, label);
        }
        None => out.push(0),
    }
}

fn put_node(out: &mut Vec<u8>, node: &TreeNode) {
    put_label(out, &node.label);
    out.extend_from_slice(&node.last_epoch.to_be_bytes());
    out.extend_from_slice(&node.min_descendant_epoch.to_be_bytes());
    put_label(out, &node.parent);
    out.push(node.node_type as u8);
    put_child(out, &node.left_child);
    put_child(out, &node.right_child);
    out.extend_from_slice(&node.hash.0);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let Some((head, rest)) = self.0.split_first_chunk::<N>() else {
            return Err("record cut short".into());
        };
        self.0 = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.take()?))
    }
    fn label(&mut self) -> Result<NodeLabel, String> {
        let label_len = self.u32()?;
        Ok(NodeLabel { label_len, label_val: self.take()? })
    }
    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let len = self.u32()? as usize;
        if len > self.0.len() {
            return Err("record cut short".into());
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head.to_vec())
    }
    fn child(&mut self) -> Result<Option<NodeLabel>, String> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.label()?)),
            other => Err(format!("child flag {other}")),
        }
    }
    fn node(&mut self) -> Result<TreeNode, String> {
        let label = self.label()?;
        let (last_epoch, least_descendant) = (self.u64()?, self.u64()?);
        let parent = self.label()?;
        let node_type = self.u8()?;
        if !(1..=3).contains(&node_type) {
            return Err(format!("node type {node_type}"));
        }
        let (left, right) = (self.child()?, self.child()?);
        let hash = AzksValue(self.take()?);
        // Through akd's builder: the node type's numbering is akd's own.
        let built = DbRecord::build_tree_node_with_previous_value(
            label.label_val,
            label.label_len,
            last_epoch,
            least_descendant,
            parent.label_val,
            parent.label_len,
            node_type,
            left,
            right,
            hash.0,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        );
        Ok(built.latest_node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(byte: u8, len: u32) -> NodeLabel {
        NodeLabel { label_val: [byte; 32], label_len: len }
    }

    #[test]
    fn records_read_back_whole() {
        let node = DbRecord::build_tree_node_with_previous_value(
            [7; 32],
            12,
            5,
            2,
            [1; 32],
            3,
            3,
            Some(label(2, 13)),
            None,
            [9; 32],
            Some(4),
            Some(1),
            Some([1; 32]),
            Some(3),
            Some(1),
            None,
            Some(label(4, 13)),
            Some([8; 32]),
        );
        let records = [
            DbRecord::Azks(DbRecord::build_azks(17, 4_000)),
            DbRecord::TreeNode(node),
            DbRecord::ValueState(DbRecord::build_user_state(b"user".to_vec(), b"key".to_vec(), 2, 256, [3; 32], 9)),
        ];
        for record in records {
            let bytes = encode(&record);
            assert_eq!(decode(&bytes).unwrap(), record);
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "a record cut at {cut} is refused");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode(&longer).is_err());
        }
        assert!(decode(&[9]).is_err());
    }
}
