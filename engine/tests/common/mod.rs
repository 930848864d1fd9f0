//! Helpers shared by the engine's integration tests: an executor runner,
//! temp dirs on the real disk, and a small key-value state machine whose
//! model is a `BTreeMap`.
#![allow(dead_code)]

use imbl::OrdMap;
use ringstore::machine::{decode_records, FrozenSection, RecordsEncoder, RestoreError, SectionSet};
use ringstore::mux::{freeze_member, restore_member, Member};
use ringstore::{OpId, StateMachine};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;

/// Runs `test` on a fresh glommio executor thread and propagates panics.
pub fn run<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(test)
        .expect("spawn executor")
        .join()
        .expect("test panicked");
}

/// A temporary directory on the real disk (never tmpfs: O_DIRECT).
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

/// The journal shape of the engine's tests: `slot_count` ring slots, 1 MiB
/// segments, 64 KiB batches, 16 KiB entries.
pub fn small_journal<S: ringstore_journal::storage::Storage>(
    journal: ringstore_journal::JournalBuilder<S>,
    slot_count: u64,
) -> ringstore_journal::JournalBuilder<S> {
    journal
        .slot_count(slot_count)
        .segment_bytes(1 << 20)
        .batch_bytes_max(64 << 10)
        .entry_bytes_max(16 << 10)
}

/// A command of [`Kv`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Sets a key.
    Put { key: u64, value: Vec<u8> },
    /// Removes a key; rejected if absent.
    Delete { key: u64 },
}

/// A rejected [`KvCommand`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {0} not found")]
pub struct NotFound(pub u64);

/// A key-value map that also records the op and epoch of each write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kv {
    pub map: OrdMap<u64, (Vec<u8>, OpId)>,
}

impl Member for Kv {
    const SECTION: &'static str = "kv";
    const VERSION: u32 = 1;
    const READABLE: std::ops::RangeInclusive<u32> = 1..=1;

    fn freeze(&self) -> Box<dyn ringstore::machine::SectionEncoder> {
        let map = self.map.clone();
        Box::new(RecordsEncoder::new(
            map.len(),
            map.into_iter().map(|(k, (v, at))| (k, v, at.op, at.epoch)),
        ))
    }

    fn restore(_version: u32, bytes: &[u8]) -> Result<Self, RestoreError> {
        let mut map = OrdMap::new();
        decode_records(bytes, |(k, v, op, epoch): (u64, Vec<u8>, u64, u64)| {
            map.insert(k, (v, OpId { op, epoch }));
            Ok(())
        })?;
        Ok(Kv { map })
    }
}

impl StateMachine for Kv {
    type Command = KvCommand;
    type Reply = OpId;
    type Rejection = NotFound;

    fn apply(&mut self, at: OpId, command: KvCommand) -> Result<OpId, NotFound> {
        match command {
            KvCommand::Put { key, value } => {
                self.map.insert(key, (value, at));
                Ok(at)
            }
            KvCommand::Delete { key } => match self.map.remove(&key) {
                Some(_) => Ok(at),
                None => Err(NotFound(key)),
            },
        }
    }

    fn freeze(&self) -> Vec<FrozenSection> {
        vec![freeze_member(self)]
    }

    fn restore(sections: &mut SectionSet) -> Result<Self, RestoreError> {
        let kv = restore_member(sections)?;
        Ok(kv)
    }
}

impl Kv {
    /// The map without op numbers, for comparing with a model.
    pub fn values(&self) -> BTreeMap<u64, Vec<u8>> {
        self.map.iter().map(|(k, (v, _))| (*k, v.clone())).collect()
    }
}

/// A deterministic value for `key` written by command number `n`.
pub fn value(key: u64, n: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (key.wrapping_mul(7) ^ n.wrapping_mul(13)).wrapping_add(i as u64) as u8)
        .collect()
}

/// Applies `command` to a plain-map model.
pub fn apply_model(model: &mut BTreeMap<u64, Vec<u8>>, command: &KvCommand) {
    match command {
        KvCommand::Put { key, value } => {
            model.insert(*key, value.clone());
        }
        KvCommand::Delete { key } => {
            model.remove(key);
        }
    }
}

/// Turns of the reactor [`until`] waits at most.
const UNTIL_TURNS_MAX: u32 = 200_000;

/// Lets the reactor turn until `done` holds (see
/// `ringstore_journal::glommio_quirks::turn_until`); fails naming `what`
/// after [`UNTIL_TURNS_MAX`] turns.
pub async fn until(what: &str, done: impl FnMut() -> bool) {
    if !ringstore_journal::glommio_quirks::turn_until(done, UNTIL_TURNS_MAX).await {
        panic!("{what}: not reached after {UNTIL_TURNS_MAX} reactor turns");
    }
}
