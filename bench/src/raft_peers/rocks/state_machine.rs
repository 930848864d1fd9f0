//! RocksDB-backed state machine implementation.
//
// Copied from openraft (https://github.com/databendlabs/openraft, main at
// 5463678f, v0.10.0-alpha.34 and later, examples/sm-rocks/src/state_machine.rs), MIT OR Apache-2.0, as a
// benchmark peer: openraft's own reference store for its 0.10 API,
// unchanged except for import paths, without its unit tests.
#![allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    unused_qualifications,
    missing_docs,
    dead_code
)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs;
use std::io;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use futures::Stream;
use futures::TryStreamExt;
use openraft::alias::LogIdOf;
use openraft::alias::SnapshotMetaOf;
use openraft::alias::SnapshotOf;
use openraft::alias::StoredMembershipOf;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::type_config::TypeConfigExt;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::StorageError;
use rocksdb::DB;
use serde::Deserialize;
use serde::Serialize;

use super::TypeConfig;

/// State machine backed by RocksDB for full persistence.
/// All application data is stored directly in the `sm_data` column family.
/// Snapshots are persisted to the `snapshot_dir` directory.
#[derive(Debug, Clone)]
pub struct RocksStateMachine {
    db: Arc<DB>,
    snapshot_dir: PathBuf,
}

impl RocksStateMachine {
    pub(crate) async fn new(
        db: Arc<DB>,
        snapshot_dir: PathBuf,
    ) -> Result<RocksStateMachine, io::Error> {
        // Validate column families exist at construction time
        db.cf_handle("sm_meta")
            .ok_or_else(|| io::Error::other("column family `sm_meta` not found"))?;
        db.cf_handle("sm_data")
            .ok_or_else(|| io::Error::other("column family `sm_data` not found"))?;

        // Create snapshot directory if it doesn't exist
        fs::create_dir_all(&snapshot_dir)?;

        Ok(Self { db, snapshot_dir })
    }

    fn cf_sm_meta(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle("sm_meta").unwrap()
    }

    fn cf_sm_data(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle("sm_data").unwrap()
    }

    #[allow(clippy::type_complexity)]
    fn get_meta(
        &self,
    ) -> Result<
        (Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>),
        StorageError<TypeConfig>,
    > {
        let cf = self.cf_sm_meta();

        let last_applied_log = self
            .db
            .get_cf(cf, "last_applied_log")
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?
            .map(|bytes| deserialize(&bytes))
            .transpose()?;

        let last_membership = self
            .db
            .get_cf(cf, "last_membership")
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?
            .map(|bytes| deserialize(&bytes))
            .transpose()?
            .unwrap_or_default();

        Ok((last_applied_log, last_membership))
    }

    /// The file name a snapshot is stored under, derived from the position it covers.
    ///
    /// [`Self::get_current_snapshot()`] picks the greatest file name, thus every writer
    /// ([`RaftSnapshotBuilder::build_snapshot()`] and [`RaftStateMachine::install_snapshot()`])
    /// must name files with this same scheme, and names must sort in position order: the
    /// zero-padded log index leads, so that lexicographic order equals numeric order.
    /// Committed log ids are totally ordered by index alone, so the leader id is a
    /// readability suffix that never decides the comparison.
    fn snapshot_filename(meta: &SnapshotMetaOf<TypeConfig>) -> String {
        match &meta.last_log_id {
            Some(last) => format!("{:020}-{}", last.index(), last.committed_leader_id()),
            None => "--".to_string(),
        }
    }
}

fn serialize<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError<TypeConfig>> {
    serde_json::to_vec(value).map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))
}

fn deserialize<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StorageError<TypeConfig>> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))
}

/// Snapshot file format: metadata + data stored together
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMetaOf<TypeConfig>,
    data: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RaftSnapshotBuilder<TypeConfig> for RocksStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    #[tracing::instrument(level = "trace", skip(self))]
    async fn build_snapshot(
        &mut self,
    ) -> Result<SnapshotOf<TypeConfig, Cursor<Vec<u8>>>, io::Error> {
        let (last_applied_log, last_membership) = self.get_meta()?;

        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: last_applied_log,
            last_membership,
        };

        // Use RocksDB snapshot for consistent point-in-time view
        let db = self.db.clone();

        #[allow(clippy::type_complexity)]
        let data =
            TypeConfig::spawn_blocking(move || -> Result<Vec<(Vec<u8>, Vec<u8>)>, io::Error> {
                let snapshot = db.snapshot();
                let cf_data = db
                    .cf_handle("sm_data")
                    .expect("column family `sm_data` not found");

                let mut snapshot_data = Vec::new();
                let iter = snapshot.iterator_cf(cf_data, rocksdb::IteratorMode::Start);

                for item in iter {
                    let (key, value) = item.map_err(|e| io::Error::other(e.to_string()))?;
                    snapshot_data.push((key.to_vec(), value.to_vec()));
                }

                Ok(snapshot_data)
            })
            .await??;

        // Serialize both metadata and data together
        let snapshot_file = SnapshotFile {
            meta: meta.clone(),
            data: data.clone(),
        };
        let file_bytes = serialize(&snapshot_file).map_err(|e| {
            StorageError::<TypeConfig>::write_snapshot(
                Some(meta.signature()),
                TypeConfig::err_from_error(&e),
            )
        })?;

        // Write complete snapshot to file
        let snapshot_path = self.snapshot_dir.join(Self::snapshot_filename(&meta));
        fs::write(&snapshot_path, &file_bytes).map_err(|e| {
            StorageError::<TypeConfig>::write_snapshot(
                Some(meta.signature()),
                TypeConfig::err_from_error(&e),
            )
        })?;

        // Return snapshot with data-only for backward compatibility with the data field
        let data_bytes = serialize(&data).map_err(|e| {
            StorageError::<TypeConfig>::write_snapshot(
                Some(meta.signature()),
                TypeConfig::err_from_error(&e),
            )
        })?;

        Ok(SnapshotOf::<TypeConfig, Cursor<Vec<u8>>> {
            meta,
            snapshot: Cursor::new(data_bytes),
        })
    }
}

impl RaftStateMachine<TypeConfig> for RocksStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        self.get_meta().map_err(|e| io::Error::other(e.to_string()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = rocksdb::WriteBatch::default();
        let mut last_applied_log = None;
        let mut last_membership: Option<StoredMembershipOf<TypeConfig>> = None;
        let mut pending_values =
            BTreeMap::<String, crate::raft_peers::types_kv::VersionedValue>::new();
        let mut responses = Vec::new();

        while let Some((entry, responder)) = entries.try_next().await? {
            tracing::debug!(%entry.log_id, "replicate to sm");

            let version = entry.log_id().index();
            last_applied_log = Some(entry.log_id());

            let response = match entry.payload {
                EntryPayload::Blank => crate::raft_peers::types_kv::Response::none(),
                EntryPayload::Normal(ref req) => match req {
                    crate::raft_peers::types_kv::Request::Set { key, value } => {
                        let cf_data = self.cf_sm_data();
                        let versioned_value = crate::raft_peers::types_kv::VersionedValue {
                            value: value.clone(),
                            version,
                        };

                        batch.put_cf(cf_data, key.as_bytes(), serialize(&versioned_value)?);
                        pending_values.insert(key.clone(), versioned_value);
                        crate::raft_peers::types_kv::Response::new(value.clone(), version)
                    }
                    crate::raft_peers::types_kv::Request::CompareAndSet {
                        key,
                        expected_version,
                        value,
                    } => {
                        let current = if let Some(current) = pending_values.get(key) {
                            Some(current.clone())
                        } else {
                            self.db
                                .get_cf(self.cf_sm_data(), key.as_bytes())
                                .map_err(|e| io::Error::other(e.to_string()))?
                                .map(|bytes| deserialize(&bytes))
                                .transpose()
                                .map_err(|e| io::Error::other(e.to_string()))?
                        };

                        if current.is_some_and(|current| current.version == *expected_version) {
                            let versioned_value = crate::raft_peers::types_kv::VersionedValue {
                                value: value.clone(),
                                version,
                            };

                            batch.put_cf(
                                self.cf_sm_data(),
                                key.as_bytes(),
                                serialize(&versioned_value)?,
                            );
                            pending_values.insert(key.clone(), versioned_value);
                            crate::raft_peers::types_kv::Response::new(value.clone(), version)
                        } else {
                            crate::raft_peers::types_kv::Response::none()
                        }
                    }
                },
                EntryPayload::Membership(ref mem) => {
                    last_membership = Some(StoredMembershipOf::<TypeConfig>::new(
                        Some(entry.log_id),
                        mem.clone(),
                    ));
                    crate::raft_peers::types_kv::Response::none()
                }
            };

            if let Some(responder) = responder {
                responses.push((responder, response));
            }
        }

        let cf_meta = self.cf_sm_meta();

        // Add metadata writes to the batch for atomic commit
        if let Some(ref log_id) = last_applied_log {
            batch.put_cf(cf_meta, "last_applied_log", serialize(log_id)?);
        }

        if let Some(ref membership) = last_membership {
            batch.put_cf(cf_meta, "last_membership", serialize(membership)?);
        }

        // Persist data and metadata atomically before acknowledging the applied entries.
        let db = self.db.clone();
        TypeConfig::spawn_blocking(move || {
            let mut write_options = rocksdb::WriteOptions::default();
            write_options.set_sync(true);
            db.write_opt(batch, &write_options)
                .map_err(io::Error::other)
        })
        .await??;

        // Only send responses after the write is durable.
        for (responder, response) in responses {
            responder.send(response);
        }

        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        tracing::info!(
            { snapshot_size = snapshot.get_ref().len() },
            "decoding snapshot for installation"
        );

        // Deserialize snapshot data
        let snapshot_data: Vec<(Vec<u8>, Vec<u8>)> = deserialize(snapshot.get_ref())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;

        // Clone data for file writing later
        let snapshot_data_clone = snapshot_data.clone();

        // Prepare metadata to restore
        let last_applied_bytes = meta
            .last_log_id
            .as_ref()
            .map(|log_id| {
                serialize(log_id)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
            })
            .transpose()?;

        let last_membership_bytes = serialize(&meta.last_membership)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;

        // Restore data and metadata atomically to RocksDB
        let db = self.db.clone();

        TypeConfig::spawn_blocking(move || -> Result<(), io::Error> {
            let cf_data = db
                .cf_handle("sm_data")
                .expect("column family `sm_data` not found");
            let cf_meta = db
                .cf_handle("sm_meta")
                .expect("column family `sm_meta` not found");

            let mut batch = rocksdb::WriteBatch::default();

            // Clear existing data in sm_data
            let iter = db.iterator_cf(cf_data, rocksdb::IteratorMode::Start);
            for item in iter {
                let (key, _) = item.map_err(|e| io::Error::other(e.to_string()))?;
                batch.delete_cf(cf_data, &key);
            }

            // Restore snapshot data to sm_data
            for (key, value) in snapshot_data {
                batch.put_cf(cf_data, &key, &value);
            }

            // Restore metadata to sm_meta
            if let Some(bytes) = last_applied_bytes {
                batch.put_cf(cf_meta, "last_applied_log", bytes);
            }
            batch.put_cf(cf_meta, "last_membership", last_membership_bytes);

            // Atomic write of all changes
            db.write(batch)
                .map_err(|e| io::Error::other(e.to_string()))?;

            db.flush_wal(true)
                .map_err(|e| io::Error::other(e.to_string()))
        })
        .await??;

        // Write snapshot file with metadata for get_current_snapshot
        let snapshot_file = SnapshotFile {
            meta: meta.clone(),
            data: snapshot_data_clone,
        };
        let file_bytes = serialize(&snapshot_file)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;

        let snapshot_path = self.snapshot_dir.join(Self::snapshot_filename(meta));
        fs::write(&snapshot_path, &file_bytes)?;

        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Self::SnapshotData>>, io::Error> {
        // Find the latest snapshot file by comparing filenames lexicographically
        let mut latest_snapshot_id: Option<String> = None;

        for entry in fs::read_dir(&self.snapshot_dir)? {
            let entry = entry?;
            let path = entry.path();

            if !path.is_file() {
                continue;
            }

            if let Some(filename) = path.file_name().and_then(|n| n.to_str()) {
                let snapshot_id = filename.to_string();

                // Update latest if this is the first snapshot or if it's newer
                if latest_snapshot_id
                    .as_ref()
                    .is_none_or(|current| snapshot_id > *current)
                {
                    latest_snapshot_id = Some(snapshot_id);
                }
            }
        }

        let Some(snapshot_id) = latest_snapshot_id else {
            return Ok(None);
        };

        let snapshot_path = self.snapshot_dir.join(&snapshot_id);

        // Read and deserialize snapshot file
        let file_bytes = fs::read(&snapshot_path)?;
        let snapshot_file: SnapshotFile = deserialize(&file_bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;

        // Serialize data for snapshot field
        let data_bytes = serialize(&snapshot_file.data)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;

        Ok(Some(SnapshotOf::<TypeConfig, Self::SnapshotData> {
            meta: snapshot_file.meta,
            snapshot: Cursor::new(data_bytes),
        }))
    }
}
