//! The multi-shard runtime: routing and isolation, clients on tokio and on
//! plain threads, replies to submits served in batches, shutdown with
//! commands in flight, startup refusals, and
//! the metrics facade.

mod common;

use common::{small_journal, temp_dir, Kv, KvCommand, NotFound};
use ringstore::runtime::{shard_for_key, Engine, EngineBuilder};
use ringstore::{Error, Shard};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Unpinned reactors (the test machine is shared) with a small journal.
fn builder(dir: &Path, shards: usize) -> EngineBuilder<Kv> {
    Engine::<Kv>::builder()
        .data_dir(dir)
        .shards(shards)
        .pin(false)
        .io_memory(1 << 20)
        .configure_shards(|_, shard| shard.journal(|j| small_journal(j, 4096)))
}

fn put(key: u64, value: u64) -> KvCommand {
    KvCommand::Put {
        key,
        value: value.to_le_bytes().to_vec(),
    }
}

/// Every shard's map, in shard order.
fn shard_maps(engine: &Engine<Kv>) -> Vec<BTreeMap<u64, Vec<u8>>> {
    let client = engine.client();
    (0..engine.shards())
        .map(|shard| futures_lite::future::block_on(client.read_shard(shard, Kv::values)).unwrap())
        .collect()
}

#[test]
fn keys_route_to_one_shard_and_shards_stay_isolated() {
    let dir = temp_dir();
    let engine = builder(dir.path(), 2).start().unwrap();
    let client = engine.client();
    let mut expected = vec![BTreeMap::new(), BTreeMap::new()];
    for key in 0..200u64 {
        let route = key.to_le_bytes();
        client
            .submit_blocking(route, put(key, key))
            .unwrap()
            .unwrap();
        expected[shard_for_key(&route, 2)].insert(key, key.to_le_bytes().to_vec());
    }
    assert!(
        expected.iter().all(|m| m.len() > 50),
        "both shards get keys"
    );
    assert_eq!(shard_maps(&engine), expected);
    // Reads route like submits.
    let got = futures_lite::future::block_on(
        client.read(7u64.to_le_bytes(), |kv: &Kv| kv.values().get(&7).cloned()),
    );
    assert_eq!(got.unwrap(), Some(7u64.to_le_bytes().to_vec()));
    engine.shutdown(false).unwrap();

    // After a restart each shard recovers only its own keys.
    let engine = engine_restart(dir.path(), 2);
    assert_eq!(shard_maps(&engine), expected);
    engine.shutdown(false).unwrap();
}

fn engine_restart(dir: &Path, shards: usize) -> Engine<Kv> {
    builder(dir, shards).start().unwrap()
}

/// Restarts the 2-shard engine in `dir` and checks that it holds every
/// acknowledged key with its value; returns it and every key it holds.
fn restart_holding(
    dir: &Path,
    acknowledged: &BTreeMap<u64, Vec<u8>>,
) -> (Engine<Kv>, BTreeMap<u64, Vec<u8>>) {
    let engine = engine_restart(dir, 2);
    let recovered: BTreeMap<u64, Vec<u8>> = shard_maps(&engine).into_iter().flatten().collect();
    for (key, value) in acknowledged {
        assert_eq!(
            recovered.get(key),
            Some(value),
            "acknowledged key {key:#x} lost"
        );
    }
    (engine, recovered)
}

#[test]
fn submits_from_tokio_tasks_and_plain_threads_are_all_acknowledged() {
    let dir = temp_dir();
    let engine = builder(dir.path(), 2).start().unwrap();
    let client = engine.client();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..64u64)
            .map(|task| {
                let client = client.clone();
                tokio::spawn(async move {
                    for i in 0..20u64 {
                        let key = task * 1000 + i;
                        client
                            .submit(key.to_le_bytes(), put(key, i))
                            .await
                            .unwrap()
                            .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let threads: Vec<_> = (0..4u64)
        .map(|thread| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let key = 1_000_000 + thread * 1000 + i;
                    client
                        .submit_blocking(key.to_le_bytes(), put(key, i))
                        .unwrap()
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let total: usize = shard_maps(&engine).iter().map(BTreeMap::len).sum();
    assert_eq!(total, 64 * 20 + 4 * 50);
    let stats = runtime.block_on(client.stats()).unwrap();
    assert_eq!(
        stats.iter().map(|s| s.commands_applied).sum::<u64>(),
        64 * 20 + 4 * 50
    );
    assert!(stats
        .iter()
        .all(|s| s.ack_latency.count > 0 && s.journal.fsyncs > 0));
    assert!(stats.iter().all(|s| s.ack_latency.p50 <= s.ack_latency.p99));
    engine.shutdown(true).unwrap();
}

#[test]
fn every_submitter_gets_its_own_reply_when_submits_are_served_in_batches() {
    let dir = temp_dir();
    let engine = builder(dir.path(), 1).start().unwrap();
    let client = engine.client();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    // Many tasks submit at once, so the shard takes several submits from
    // its queue together; each rejection names its own key, so a reply
    // handed to the wrong submitter shows.
    let acked = runtime.block_on(async {
        let tasks: Vec<_> = (0..128u64)
            .map(|task| {
                let client = client.clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for i in 0..16u64 {
                        let key = task * 1000 + i;
                        let missing = 1_000_000 + key;
                        let rejected = client
                            .submit(missing.to_le_bytes(), KvCommand::Delete { key: missing })
                            .await
                            .unwrap();
                        assert_eq!(rejected, Err(NotFound(missing)));
                        let at = client
                            .submit(key.to_le_bytes(), put(key, i))
                            .await
                            .unwrap()
                            .unwrap();
                        acked.push((key, at));
                    }
                    acked
                })
            })
            .collect();
        let mut acked = Vec::new();
        for task in tasks {
            acked.extend(task.await.unwrap());
        }
        acked
    });
    // Each put's reply is the op the shard applied that key at.
    let applied_at: BTreeMap<u64, ringstore::OpId> = runtime
        .block_on(client.read_shard(0, |kv: &Kv| {
            kv.map.iter().map(|(key, (_, at))| (*key, *at)).collect()
        }))
        .unwrap();
    assert_eq!(applied_at.len(), acked.len());
    for (key, at) in acked {
        assert_eq!(applied_at[&key], at, "key {key}");
    }
    engine.shutdown(false).unwrap();
}

#[test]
fn a_batch_of_commands_crosses_in_one_request_and_comes_back_in_order() {
    let dir = temp_dir();
    let engine = builder(dir.path(), 2).start().unwrap();
    let client = engine.client();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // Puts with a delete of a missing key in the middle: its rejection
    // comes back at its place, and the puts around it stand.
    let missing = 1_000_000;
    let mut commands: Vec<KvCommand> = (0..100u64).map(|key| put(key, key * 7)).collect();
    commands.insert(40, KvCommand::Delete { key: missing });
    let outcomes = runtime.block_on(client.submit_batch(1, commands)).unwrap();
    assert_eq!(outcomes.len(), 101);
    assert!(matches!(&outcomes[40], Ok(Err(NotFound(key))) if *key == missing));
    let ops: Vec<u64> = outcomes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 40)
        .map(|(_, outcome)| outcome.as_ref().unwrap().as_ref().unwrap().op)
        .collect();
    assert!(
        ops.windows(2).all(|pair| pair[0] < pair[1]),
        "applied in the order given: {ops:?}"
    );
    let values: BTreeMap<u64, Vec<u8>> = runtime
        .block_on(client.read_shard(1, |kv: &Kv| {
            kv.map.iter().map(|(k, (v, _))| (*k, v.clone())).collect()
        }))
        .unwrap();
    assert_eq!(values.len(), 100);
    assert!(values
        .iter()
        .all(|(key, value)| *value == (key * 7).to_le_bytes().to_vec()));
    // Nothing reached the other shard.
    let other = runtime
        .block_on(client.read_shard(0, |kv: &Kv| kv.map.len()))
        .unwrap();
    assert_eq!(other, 0);
    // An empty batch, a shard that does not exist, a stopped engine.
    assert!(runtime
        .block_on(client.submit_batch(0, Vec::new()))
        .unwrap()
        .is_empty());
    for commands in [vec![put(1, 1)], Vec::new()] {
        assert!(matches!(
            runtime.block_on(client.submit_batch(2, commands)),
            Err(Error::InvalidConfig { .. })
        ));
    }
    engine.shutdown(false).unwrap();
    assert!(matches!(
        runtime.block_on(client.submit_batch(0, vec![put(1, 1)])),
        Err(Error::Closed)
    ));
}

#[test]
fn shutdown_with_commands_in_flight_loses_no_acknowledged_command() {
    let dir = temp_dir();
    let engine = builder(dir.path(), 2).start().unwrap();
    let client = engine.client();
    let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
    let closed_seen = Arc::new(AtomicBool::new(false));
    let submitters: Vec<_> = (0..8u64)
        .map(|thread| {
            let client = client.clone();
            let acknowledged = acknowledged.clone();
            let closed_seen = closed_seen.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    let key = thread << 32 | i;
                    match client.submit_blocking(key.to_le_bytes(), put(key, i)) {
                        Ok(Ok(_)) => {
                            acknowledged
                                .lock()
                                .unwrap()
                                .insert(key, i.to_le_bytes().to_vec());
                        }
                        Err(Error::Closed) => {
                            closed_seen.store(true, Ordering::SeqCst);
                            return;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
        })
        .collect();
    // Let the submitters get going, then shut down under them.
    while acknowledged.lock().unwrap().len() < 2000 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let report = engine.shutdown(true).unwrap();
    for submitter in submitters {
        submitter.join().unwrap();
    }
    assert!(closed_seen.load(Ordering::SeqCst));
    assert!(report
        .shards
        .iter()
        .all(|s| matches!(s.final_checkpoint, Some(Ok(_)))));
    // A submit after shutdown is refused, not applied.
    assert!(matches!(
        client.submit_blocking(1u64.to_le_bytes(), put(1, 1)),
        Err(Error::Closed)
    ));

    let acknowledged = acknowledged.lock().unwrap();
    let (engine, recovered) = restart_holding(dir.path(), &acknowledged);
    // Nothing beyond what was submitted: every recovered key was sent.
    assert!(recovered.len() >= acknowledged.len());
    engine.shutdown(false).unwrap();
}

#[test]
fn shutdown_with_batches_in_flight_loses_no_acknowledged_command() {
    let dir = temp_dir();
    let engine = builder(dir.path(), 2).start().unwrap();
    let client = engine.client();
    let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
    let closed_seen = Arc::new(AtomicBool::new(false));
    const BATCH: u64 = 8;
    let submitters: Vec<_> = (0..4u64)
        .map(|thread| {
            let client = client.clone();
            let acknowledged = acknowledged.clone();
            let closed_seen = closed_seen.clone();
            std::thread::spawn(move || {
                for round in 0.. {
                    let keys: Vec<u64> = (0..BATCH)
                        .map(|j| thread << 32 | (round * BATCH + j))
                        .collect();
                    let commands = keys.iter().map(|&key| put(key, key)).collect();
                    let batch = client.submit_batch((thread % 2) as usize, commands);
                    match futures_lite::future::block_on(batch) {
                        Ok(outcomes) => {
                            assert_eq!(outcomes.len(), keys.len());
                            let mut acknowledged = acknowledged.lock().unwrap();
                            for (key, outcome) in keys.iter().zip(outcomes) {
                                match outcome {
                                    Ok(Ok(_)) => {
                                        acknowledged.insert(*key, key.to_le_bytes().to_vec());
                                    }
                                    other => panic!("unexpected {other:?}"),
                                }
                            }
                        }
                        Err(Error::Closed) => {
                            closed_seen.store(true, Ordering::SeqCst);
                            return;
                        }
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                }
            })
        })
        .collect();
    // Let the batches get going, then shut down under them: a batch taken
    // before the shutdown is served whole, one queued after it is refused
    // whole (`Closed`, nothing acknowledged).
    while acknowledged.lock().unwrap().len() < 2000 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    engine.shutdown(false).unwrap();
    for submitter in submitters {
        submitter.join().unwrap();
    }
    assert!(closed_seen.load(Ordering::SeqCst));

    let acknowledged = acknowledged.lock().unwrap();
    let (engine, _) = restart_holding(dir.path(), &acknowledged);
    engine.shutdown(false).unwrap();
}

#[test]
fn startup_refuses_a_locked_dir_another_shard_count_and_a_missing_cpu() {
    let dir = temp_dir();
    let engine = builder(dir.path(), 2).start().unwrap();
    let err = builder(dir.path(), 2)
        .start()
        .err()
        .expect("second engine refused");
    assert!(matches!(err, Error::DirLocked { .. }), "{err}");
    assert!(
        err.to_string().contains(&std::process::id().to_string()),
        "{err}"
    );
    engine.shutdown(false).unwrap();

    let err = builder(dir.path(), 3)
        .start()
        .err()
        .expect("other shard count refused");
    assert!(
        matches!(
            err,
            Error::ShardCountMismatch {
                found: 2,
                configured: 3,
                ..
            }
        ),
        "{err}"
    );

    let other = temp_dir();
    let err = builder(other.path(), 1)
        .cpus(vec![100_000])
        .start()
        .err()
        .expect("missing CPU refused");
    assert!(
        matches!(err, Error::CpuUnavailable { cpu: 100_000, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("available"), "{err}");

    let err = builder(other.path(), 0)
        .start()
        .err()
        .expect("zero shards refused");
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                setting: "shards",
                ..
            }
        ),
        "{err}"
    );
}

/// The keys of `0..200` that route to `shard` of 2, each put with its
/// own value; returns what was acknowledged.
fn fill_shard(engine: &Engine<Kv>, shard: usize) -> BTreeMap<u64, Vec<u8>> {
    let client = engine.client();
    let mut acknowledged = BTreeMap::new();
    for key in (0..200u64).filter(|k| shard_for_key(&k.to_le_bytes(), 2) == shard) {
        client
            .submit_blocking(key.to_le_bytes(), put(key, key))
            .unwrap()
            .unwrap();
        acknowledged.insert(key, key.to_le_bytes().to_vec());
    }
    acknowledged
}

#[test]
fn a_created_shard_whose_directory_is_gone_is_refused_not_started_empty() {
    let dir = temp_dir();
    let engine = builder(dir.path(), 2).start().unwrap();
    let acknowledged = fill_shard(&engine, 1);
    engine.shutdown(false).unwrap();
    let shard_dir = dir.path().join("shard-001");
    let aside = dir.path().join("shard-001.aside");

    // Moved aside (or lost): the start refuses, naming the shard, and
    // leaves nothing behind in its place.
    std::fs::rename(&shard_dir, &aside).unwrap();
    let err = builder(dir.path(), 2)
        .start()
        .err()
        .expect("a missing shard refused");
    assert!(
        matches!(&err, Error::ShardMissing { shard: 1, path } if *path == shard_dir),
        "{err}"
    );
    assert!(err.to_string().contains("restore"), "{err}");
    assert!(!shard_dir.exists(), "nothing created in its place");
    // The same for a directory that is there but emptied.
    std::fs::create_dir(&shard_dir).unwrap();
    let err = builder(dir.path(), 2).start().err().expect("refused");
    assert!(matches!(err, Error::ShardMissing { shard: 1, .. }), "{err}");
    std::fs::remove_dir(&shard_dir).unwrap();

    // Put back: every acknowledged command is there.
    std::fs::rename(&aside, &shard_dir).unwrap();
    let (engine, _) = restart_holding(dir.path(), &acknowledged);
    engine.shutdown(false).unwrap();

    // Given up on purpose: the shard starts empty, and is recorded again.
    std::fs::remove_dir_all(&shard_dir).unwrap();
    let engine = builder(dir.path(), 2)
        .abandon_missing_shard(1)
        .start()
        .unwrap();
    assert!(shard_maps(&engine)[1].is_empty());
    engine.shutdown(false).unwrap();
    std::fs::remove_dir_all(&shard_dir).unwrap();
    let err = builder(dir.path(), 2).start().err().expect("refused");
    assert!(matches!(err, Error::ShardMissing { shard: 1, .. }), "{err}");
}

#[test]
fn a_superblock_from_before_shards_were_recorded_records_them_at_the_next_start() {
    use ringstore::runtime::startup::{read_manifest_record_on, MANIFEST_FILE_NAME};
    use ringstore_journal::superblock::{write_file_blocking, SuperblockKind};
    let dir = temp_dir();
    let engine = builder(dir.path(), 2).start().unwrap();
    let acknowledged = fill_shard(&engine, 0);
    engine.shutdown(false).unwrap();
    // The earlier body: the shard count and a zero word, nothing recorded.
    let path = dir.path().join(MANIFEST_FILE_NAME);
    let mut old_body = 2u32.to_le_bytes().to_vec();
    old_body.extend_from_slice(&[0; 4]);
    std::fs::remove_file(&path).unwrap();
    write_file_blocking(&path, true, SuperblockKind::DataDir, 7, &old_body).unwrap();
    let read = |dir: &Path| {
        let dir = dir.to_path_buf();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                read_manifest_record_on(&ringstore_journal::storage::DmaStorage::new(), &dir)
                    .await
                    .unwrap()
                    .unwrap()
            })
            .unwrap()
            .join()
            .unwrap()
    };
    assert_eq!(read(dir.path()).created, None);

    let (engine, _) = restart_holding(dir.path(), &acknowledged);
    engine.shutdown(false).unwrap();
    assert_eq!(read(dir.path()).created, Some(vec![true, true]));
    std::fs::remove_dir_all(dir.path().join("shard-000")).unwrap();
    let err = builder(dir.path(), 2).start().err().expect("refused");
    assert!(matches!(err, Error::ShardMissing { shard: 0, .. }), "{err}");
}

#[test]
fn a_shard_that_fails_to_open_names_itself_and_stops_the_others() {
    let dir = temp_dir();
    builder(dir.path(), 2)
        .start()
        .unwrap()
        .shutdown(false)
        .unwrap();
    // Damage shard 1's identity: it must refuse to open.
    let identity = dir.path().join("shard-001").join("identity");
    let mut bytes = std::fs::read(&identity).unwrap();
    bytes[20] ^= 0x40;
    std::fs::write(&identity, bytes).unwrap();
    let err = builder(dir.path(), 2)
        .start()
        .err()
        .expect("damaged shard refused");
    assert!(matches!(err, Error::ShardStart { shard: 1, .. }), "{err}");
    // Shard 0 was closed again: its lock is free.
    assert!(!ringstore::is_locked(&dir.path().join("shard-000")).unwrap());
    assert!(!ringstore::is_locked(dir.path()).unwrap());
}

#[test]
fn a_shard_directory_is_opened_by_one_shard_at_a_time() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    common::run(move || async move {
        let shard = Shard::<Kv>::builder(&path).open().await.unwrap();
        let err = Shard::<Kv>::builder(&path)
            .open()
            .await
            .err()
            .expect("locked");
        assert!(matches!(err, Error::DirLocked { .. }), "{err}");
        shard.close().await.unwrap();
        // Closing releases it.
        let shard = Shard::open(Shard::<Kv>::builder(&path)).await.unwrap();
        shard.close().await.unwrap();
    });
}

#[test]
fn metrics_reach_the_facade() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let dir = temp_dir();
    let write_through = std::cell::Cell::new(false);
    metrics::with_local_recorder(&recorder, || {
        glommio::LocalExecutorBuilder::default()
            .make()
            .unwrap()
            .run(async {
                let shard = Shard::<Kv>::builder(dir.path())
                    .metrics_label("7")
                    .journal(|j| small_journal(j, 4096))
                    .open()
                    .await
                    .unwrap();
                for i in 0..50 {
                    shard.submit(put(i, i)).await.unwrap().unwrap();
                }
                shard.checkpoint().await.unwrap();
                let stats = shard.stats();
                assert_eq!(stats.ack_latency.count, 50);
                write_through
                    .set(stats.journal.durability == ringstore_journal::Durability::WriteThrough);
                assert_eq!(
                    stats.journal.batch_entries_log2.iter().sum::<u64>(),
                    stats.journal.writes
                );
                shard.close().await.unwrap();
            });
    });
    let snapshot = snapshotter.snapshot().into_hashmap();
    let find = |name: &str| {
        snapshot
            .iter()
            .find(|(key, _)| {
                key.key().name() == name
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "shard" && l.value() == "7")
            })
            .map(|(_, (_, _, value))| value)
            .unwrap_or_else(|| panic!("{name} not recorded"))
    };
    assert!(matches!(
        find("ringstore_commands_applied_total"),
        DebugValue::Counter(50)
    ));
    assert!(matches!(
        find("ringstore_checkpoints_total"),
        DebugValue::Counter(1)
    ));
    assert!(
        matches!(find("ringstore_ack_latency_seconds"), DebugValue::Histogram(v) if v.len() == 50)
    );
    assert!(matches!(find("ringstore_journal_appends_total"), DebugValue::Counter(n) if *n >= 50));
    assert!(matches!(find("ringstore_journal_fsyncs_total"), DebugValue::Counter(n) if *n > 0));
    // The open created the first segment; nothing was retired to recycle.
    assert!(matches!(
        find("ringstore_journal_segments_created_total"),
        DebugValue::Counter(n) if *n >= 1
    ));
    assert!(matches!(
        find("ringstore_journal_segments_recycled_total"),
        DebugValue::Counter(0)
    ));
    // No read of this healthy journal needed a second try.
    assert!(matches!(
        find("ringstore_journal_read_retries_total"),
        DebugValue::Counter(0)
    ));
    // Nor did the disk fail one.
    assert!(matches!(
        find("ringstore_journal_read_io_errors_total"),
        DebugValue::Counter(0)
    ));
    assert!(
        matches!(find("ringstore_ring_slots"), DebugValue::Gauge(v) if v.into_inner() == 4096.0)
    );
    // What `Auto`'s probe chose on this disk, as the stats say.
    let expected = f64::from(u8::from(write_through.get()));
    assert!(
        matches!(find("ringstore_journal_write_through"), DebugValue::Gauge(v) if v.into_inner() == expected)
    );
}

#[test]
fn a_relative_shard_directory_opens() {
    let dir = temp_dir();
    // From the current directory (tests run in engine/) up to `/` and down
    // to the temp dir: relative wherever the target directory is
    // (CARGO_TARGET_DIR may be outside the workspace).
    let cwd = std::env::current_dir().unwrap();
    let up: std::path::PathBuf = cwd.components().skip(1).map(|_| "..").collect();
    let relative = up
        .join(dir.path().strip_prefix("/").expect("an absolute temp dir"))
        .join("shard");
    assert!(relative.is_relative());
    common::run(move || async move {
        let shard = Shard::<Kv>::builder(&relative).open().await.unwrap();
        shard.submit(put(1, 1)).await.unwrap().unwrap();
        shard.close().await.unwrap();
        let shard = Shard::<Kv>::builder(&relative).open().await.unwrap();
        assert_eq!(shard.read(Kv::values).len(), 1);
        shard.close().await.unwrap();
    });
}

/// Routing is part of the on-disk contract (a key's state lives on the
/// shard it was routed to), so it is pinned to fixed vectors rather than
/// checked against itself: FNV-1a 64 of the key (the published vectors
/// for "", "a" and "foobar" are 0xcbf29ce484222325, 0xaf63dc4c8601ec8c
/// and 0x85944171f73967e8) modulo the shard count.
#[test]
fn keys_route_to_the_same_shards_in_every_version() {
    let golden: [(&[u8], [usize; 5]); 6] = [
        (b"", [0, 1, 2, 5, 37]),
        (b"a", [0, 0, 1, 4, 12]),
        (b"foobar", [0, 0, 0, 0, 40]),
        (b"orders/eu", [0, 1, 1, 3, 19]),
        (&[7, 0, 0, 0, 0, 0, 0, 0], [0, 0, 1, 2, 34]),
        (&[0xff; 16], [0, 1, 0, 5, 21]),
    ];
    for (key, shards) in golden {
        for (count, expected) in [1, 2, 3, 8, 64].into_iter().zip(shards) {
            assert_eq!(
                shard_for_key(key, count),
                expected,
                "key {key:?} among {count} shards"
            );
        }
    }
    // No shards is taken as one, not a division by zero.
    assert_eq!(shard_for_key(b"a", 0), 0);
}
