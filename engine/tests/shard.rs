//! Pins the shard's contract on real O_DIRECT files: submit/apply in op
//! order, recovery equal to a model of the acknowledged commands, a
//! checkpoint during a stream of submits losing nothing, ring-full
//! backpressure that waits for a checkpoint (and its bounded wait), a batch
//! of submits (in order, a refused command failing alone, a batch larger
//! than the ring), the
//! watermark kept at the previous snapshot, the replay gap and
//! snapshot-behind-journal errors, and configuration validation.
mod common;
use common::*;
use ringstore::{CheckpointPolicy, Error, Shard};
use std::{collections::BTreeMap, rc::Rc, time::Duration};

fn builder(dir: &std::path::Path) -> ringstore::ShardBuilder<Kv> {
    Shard::<Kv>::builder(dir).journal(|j| small_journal(j, 4096))
}

#[test]
fn submits_apply_in_op_order_and_survive_reopen() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let shard = builder(&path).open().await.unwrap();
        assert!(shard.recovery_report().domain_created);
        let domain = shard.domain();
        let mut model = BTreeMap::new();
        // Concurrent submitters share group commits; replies carry the op.
        let mut tasks = Vec::new();
        for t in 0..32u64 {
            let shard = shard.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut done = Vec::new();
                for n in 0..20u64 {
                    let command = KvCommand::Put {
                        key: t * 1000 + n,
                        value: value(t, n, 100),
                    };
                    let at = shard.submit(command.clone()).await.unwrap().unwrap();
                    done.push((at.op, command));
                }
                done
            }));
        }
        let mut acked = Vec::new();
        for task in tasks {
            acked.extend(task.await);
        }
        acked.sort_by_key(|(op, _)| *op);
        let ops: Vec<u64> = acked.iter().map(|(op, _)| *op).collect();
        assert_eq!(ops, (1..=640).collect::<Vec<_>>(), "every op applied once");
        for (_, command) in &acked {
            apply_model(&mut model, command);
        }
        // A rejection is durable and changes nothing.
        let rejected = shard
            .submit(KvCommand::Delete { key: 999_999 })
            .await
            .unwrap();
        assert_eq!(rejected, Err(NotFound(999_999)));
        assert_eq!(shard.read(|kv| kv.values()), model);
        assert_eq!(shard.stats().commands_rejected, 1);
        shard.close().await.unwrap();
        assert!(matches!(
            shard.submit(KvCommand::Delete { key: 1 }).await,
            Err(Error::Closed)
        ));

        let shard = builder(&path).open().await.unwrap();
        assert_eq!(shard.domain(), domain);
        assert_eq!(shard.recovery_report().replayed_ops, 641);
        assert_eq!(shard.applied().op, 641);
        assert_eq!(shard.read(|kv| kv.values()), model);
        shard.close().await.unwrap();
    });
}

#[test]
fn an_open_told_not_to_create_refuses_a_directory_that_lost_its_shard() {
    let dir = temp_dir();
    let path = dir.path().join("shard");
    run(move || async move {
        // No directory at all (a volume not mounted): refused, nothing made.
        let refused = builder(&path).create_if_missing(false).open().await;
        assert!(
            matches!(&refused, Err(Error::NoShard { path: p }) if *p == path),
            "{:?}",
            refused.err()
        );
        assert!(!path.exists(), "a refused open creates nothing");

        // The first open creates the shard; later ones find it.
        let shard = builder(&path).open().await.unwrap();
        let at = shard
            .submit(KvCommand::Put {
                key: 1,
                value: value(1, 1, 100),
            })
            .await
            .unwrap()
            .unwrap();
        shard.close().await.unwrap();
        let shard = builder(&path)
            .create_if_missing(false)
            .open()
            .await
            .unwrap();
        assert!(!shard.recovery_report().domain_created);
        assert_eq!(shard.applied().op, at.op);
        shard.close().await.unwrap();

        // The directory emptied (a wiped host): refused, not started empty.
        std::fs::remove_dir_all(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let refused = builder(&path).create_if_missing(false).open().await;
        let message = refused
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            matches!(&refused, Err(Error::NoShard { .. })) && message.contains("create_if_missing"),
            "{message}"
        );
        // Told it is new, it creates a shard again.
        let shard = builder(&path).open().await.unwrap();
        assert!(shard.recovery_report().domain_created);
        assert_eq!(shard.applied().op, 0);
        shard.close().await.unwrap();
    });
}

#[test]
fn a_checkpoint_asked_for_once_a_close_began_writes_nothing() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let snapshots = |path: &std::path::Path| {
            std::fs::read_dir(path.join("snapshots"))
                .map(|d| d.count())
                .unwrap_or(0)
        };
        for polls in 0..2 {
            let shard = builder(&path).open().await.unwrap();
            let _ = shard
                .submit(KvCommand::Put {
                    key: polls,
                    value: value(polls, 1, 100),
                })
                .await
                .unwrap();
            let before = snapshots(&path);
            // The close begun (and, the second time, ended): the directory
            // may be handed on at any moment, so no snapshot may be written.
            let mut close = Box::pin(shard.close());
            let closed = if polls == 0 {
                futures_lite::future::poll_once(&mut close).await
            } else {
                Some((&mut close).await)
            };
            let checkpoint = shard.checkpoint().await;
            assert!(matches!(checkpoint, Err(Error::Closed)), "{checkpoint:?}");
            if closed.is_none() {
                close.await.unwrap();
            }
            assert_eq!(
                snapshots(&path),
                before,
                "no snapshot written after the close began"
            );
        }
    });
}

#[test]
fn a_close_under_load_refuses_the_waiting_submits_without_poisoning() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let shard = builder(&path).open().await.unwrap();
        // Far more bytes queued than the journal's pipeline holds: many of
        // these wait in the journal for room when the close comes.
        let mut tasks = Vec::new();
        for n in 0..400u64 {
            let shard = shard.clone();
            tasks.push(glommio::spawn_local(async move {
                shard
                    .submit(KvCommand::Put {
                        key: n,
                        value: value(n, 1, 12_000),
                    })
                    .await
            }));
        }
        glommio::yield_if_needed().await;
        futures_lite::future::yield_now().await;
        shard.close().await.unwrap();
        let mut refused = 0;
        for task in tasks {
            match task.await {
                Ok(outcome) => assert!(outcome.is_ok()),
                Err(Error::Closed) => refused += 1,
                Err(e) => panic!("a submit refused by the close failed otherwise: {e}"),
            }
        }
        assert!(
            !shard.describe().contains("poisoned true"),
            "{}",
            shard.describe()
        );
        println!("{refused} submits refused by the close");
    });
}

#[test]
fn checkpoint_during_a_stream_of_submits_loses_nothing() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        // Thresholds low enough that the compaction task checkpoints many
        // times while 64 submitters run.
        let shard = builder(&path)
            .checkpoint_policy(CheckpointPolicy {
                ops_max: Some(300),
                ..CheckpointPolicy::default()
            })
            .open()
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for t in 0..64u64 {
            let shard = shard.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut done = Vec::new();
                for n in 0..100u64 {
                    let command = KvCommand::Put {
                        key: (t * 100 + n) % 500,
                        value: value(t, n, 64),
                    };
                    let at = shard.submit(command.clone()).await.unwrap().unwrap();
                    done.push((at.op, command));
                }
                done
            }));
        }
        // Explicit checkpoints race the automatic ones.
        for _ in 0..5 {
            glommio::timer::sleep(Duration::from_millis(5)).await;
            shard.checkpoint().await.unwrap();
        }
        let mut acked = Vec::new();
        for task in tasks {
            acked.extend(task.await);
        }
        acked.sort_by_key(|(op, _)| *op);
        let mut model = BTreeMap::new();
        for (_, command) in &acked {
            apply_model(&mut model, command);
        }
        let stats = shard.stats();
        assert!(stats.checkpoints >= 5, "{stats:?}");
        assert_eq!(stats.checkpoint_failures, 0);
        assert!(shard.journal().watermark() > 0, "the watermark moved");
        // The journal keeps the ops above the previous snapshot.
        assert!(shard.journal().watermark() < shard.snapshot_watermark());
        assert_eq!(shard.read(|kv| kv.values()), model);
        shard.close().await.unwrap();

        let shard = builder(&path).open().await.unwrap();
        let report = shard.recovery_report();
        assert!(report.snapshot.is_some());
        assert!(report.skipped_snapshots.is_empty());
        assert_eq!(shard.applied().op, 6400);
        assert_eq!(shard.read(|kv| kv.values()), model);
        // Old generations were pruned to the configured count.
        assert!(shard.snapshots().generations().unwrap().len() <= 3);
        shard.close().await.unwrap();
    });
}

#[test]
fn a_batch_of_submits_applies_in_order_and_a_refused_command_fails_alone() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let shard = builder(&path).open().await.unwrap();
        // A single submitter racing the batch takes ops in between.
        let racing = {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let mut ops = Vec::new();
                for n in 0..20u64 {
                    let command = KvCommand::Put {
                        key: 10_000 + n,
                        value: value(10_000, n, 8),
                    };
                    ops.push(shard.submit(command).await.unwrap().unwrap().op);
                }
                ops
            })
        };
        let mut commands: Vec<KvCommand> = (0..40u64)
            .map(|n| KvCommand::Put {
                key: n,
                value: value(n, 0, 100),
            })
            .collect();
        // An entry over the journal's 16 KiB limit, and a rejection.
        commands[7] = KvCommand::Put {
            key: 7,
            value: vec![0; 20 << 10],
        };
        commands[9] = KvCommand::Delete { key: 5_000 };
        let outcomes = shard.submit_many(commands.clone()).await;
        let racing = racing.await;
        assert_eq!(outcomes.len(), 40);
        let mut last_op = 0;
        let mut model = BTreeMap::new();
        for (n, (outcome, command)) in outcomes.iter().zip(&commands).enumerate() {
            match n {
                7 => assert!(
                    matches!(outcome, Err(Error::Journal(_))),
                    "the oversized command fails alone: {outcome:?}"
                ),
                9 => assert!(matches!(outcome, Ok(Err(NotFound(5_000)))), "{outcome:?}"),
                _ => {
                    let at = outcome.as_ref().unwrap().as_ref().unwrap();
                    assert!(at.op > last_op, "ops rise in the batch's order");
                    last_op = at.op;
                    apply_model(&mut model, command);
                }
            }
        }
        for n in 0..20u64 {
            model.insert(10_000 + n, value(10_000, n, 8));
        }
        assert_eq!(racing.len(), 20);
        assert_eq!(shard.read(|kv| kv.values()), model);
        // 39 of the batch's commands and the racer's 20 took ops.
        assert_eq!(shard.applied().op, 59);
        shard.close().await.unwrap();

        let shard = builder(&path).open().await.unwrap();
        assert_eq!(shard.read(|kv| kv.values()), model);
        shard.close().await.unwrap();
    });
}

#[test]
fn a_batch_larger_than_the_ring_applies_what_it_queued_to_make_room() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        // 16 slots and no automatic checkpoints: only the batch's own
        // applied commands, checkpointed by the waiting submit's request,
        // can free slots for the rest of it.
        let shard = Shard::<Kv>::builder(&path)
            .journal(|j| small_journal(j, 16))
            .checkpoint_policy(CheckpointPolicy {
                automatic: false,
                ring_full_wait_max: Duration::from_secs(30),
                ..CheckpointPolicy::default()
            })
            .open()
            .await
            .unwrap();
        let batch_done = Rc::new(std::cell::Cell::new(false));
        let checkpointer = {
            let shard = shard.clone();
            let batch_done = batch_done.clone();
            glommio::spawn_local(async move {
                while !batch_done.get() {
                    if shard.stats().ring_full_waits > 0 {
                        shard.checkpoint().await.unwrap();
                    }
                    glommio::executor().yield_task_queue_now().await;
                }
            })
        };
        let commands = (0..100u64).map(|n| KvCommand::Put {
            key: n,
            value: vec![1],
        });
        let outcomes = shard.submit_many(commands).await;
        batch_done.set(true);
        checkpointer.await;
        for (n, outcome) in outcomes.iter().enumerate() {
            let at = outcome.as_ref().unwrap().as_ref().unwrap();
            assert_eq!(at.op, n as u64 + 1);
        }
        shard.close().await.unwrap();
    });
}

#[test]
fn a_full_ring_waits_for_a_checkpoint_and_then_resolves() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let shard = Shard::<Kv>::builder(&path)
            .journal(|j| small_journal(j, 64))
            .checkpoint_policy(CheckpointPolicy {
                automatic: false,
                ring_full_wait_max: Duration::from_secs(30),
                ..CheckpointPolicy::default()
            })
            .open()
            .await
            .unwrap();
        for n in 0..64 {
            shard
                .submit(KvCommand::Put {
                    key: n,
                    value: vec![1],
                })
                .await
                .unwrap()
                .unwrap();
        }
        // The ring is full: this submit waits.
        let waiting = {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                shard
                    .submit(KvCommand::Put {
                        key: 64,
                        value: vec![2],
                    })
                    .await
            })
        };
        until("the 65th submit waits for ring slots", || {
            shard.stats().ring_full_waits >= 1
        })
        .await;
        assert_eq!(shard.applied().op, 64, "the 65th submit is waiting");
        // Two checkpoints: the first watermark stays at the previous
        // snapshot (none) unless the ring is short, which it is.
        let outcome = shard.checkpoint().await.unwrap();
        assert!(outcome.watermark_advanced, "{outcome:?}");
        let at = waiting.await.unwrap().unwrap();
        assert_eq!(at.op, 65);
        shard.close().await.unwrap();
    });
}

#[test]
fn a_full_ring_with_automatic_checkpoints_never_fails_a_submit() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let shard = Shard::<Kv>::builder(&path)
            .journal(|j| small_journal(j, 128))
            .open()
            .await
            .unwrap();
        let shard = Rc::new(shard);
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let shard = shard.clone();
            tasks.push(glommio::spawn_local(async move {
                for n in 0..200u64 {
                    shard
                        .submit(KvCommand::Put {
                            key: t,
                            value: value(t, n, 32),
                        })
                        .await
                        .unwrap()
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        assert_eq!(shard.applied().op, 3200, "25 times the ring's slots");
        assert!(shard.stats().checkpoints > 10);
        shard.close().await.unwrap();
    });
}

#[test]
fn a_full_ring_without_checkpoints_fails_after_the_bounded_wait() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let shard = Shard::<Kv>::builder(&path)
            .journal(|j| small_journal(j, 16))
            .checkpoint_policy(CheckpointPolicy {
                automatic: false,
                ring_full_wait_max: Duration::from_millis(100),
                ..CheckpointPolicy::default()
            })
            .open()
            .await
            .unwrap();
        for n in 0..16 {
            shard
                .submit(KvCommand::Put {
                    key: n,
                    value: vec![],
                })
                .await
                .unwrap()
                .unwrap();
        }
        // A submit dropped while it waits for room leaves no waiter
        // counted behind (one would keep the ring under pressure for good:
        // checkpoint after checkpoint, the previous snapshot unkept).
        {
            let mut waiting = Box::pin(shard.submit(KvCommand::Put {
                key: 16,
                value: vec![],
            }));
            assert!(futures_lite::future::poll_once(&mut waiting)
                .await
                .is_none());
            assert!(
                shard.describe().contains("ring waiters 1"),
                "{}",
                shard.describe()
            );
        }
        assert!(
            shard.describe().contains("ring waiters 0"),
            "{}",
            shard.describe()
        );
        let started = std::time::Instant::now();
        let result = shard
            .submit(KvCommand::Put {
                key: 16,
                value: vec![],
            })
            .await;
        assert!(
            matches!(result, Err(Error::Backpressure { waited }) if waited >= Duration::from_millis(100)),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // Not poisoned: after a checkpoint the submit goes through.
        shard.checkpoint().await.unwrap();
        let at = shard
            .submit(KvCommand::Put {
                key: 16,
                value: vec![],
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(at.op, 17);
        shard.close().await.unwrap();
    });
}

#[test]
fn a_gap_above_the_snapshot_is_reported_not_skipped() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let shard = builder(&path).open().await.unwrap();
        shard.close().await.unwrap();
        // A replica-fed journal with op 3 missing.
        let journal = small_journal(
            ringstore_journal::Journal::builder(path.join("journal")),
            4096,
        )
        .open()
        .await
        .unwrap();
        for op in [1u64, 2, 4] {
            let command = KvCommand::Put {
                key: op,
                value: vec![op as u8],
            };
            let payload = ringstore::machine::encode(&command).unwrap();
            journal.write(op, &payload).await.unwrap();
        }
        journal.close().await.unwrap();
        match builder(&path).open().await {
            Err(Error::ReplayGap {
                op: 3,
                snapshot_op: 0,
                last_op: 4,
            }) => {}
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("opened over a gap"),
        }
    });
}

#[test]
fn a_journal_entry_that_is_not_a_command_is_a_typed_error() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let shard = builder(&path).open().await.unwrap();
        shard.close().await.unwrap();
        let journal = small_journal(
            ringstore_journal::Journal::builder(path.join("journal")),
            4096,
        )
        .open()
        .await
        .unwrap();
        journal.append(&[0xff; 9]).await.unwrap();
        journal.close().await.unwrap();
        match builder(&path).open().await {
            Err(Error::CommandDecode { op: 1, .. }) => {}
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("opened with an undecodable command"),
        }
    });
}

#[test]
fn settings_out_of_range_are_refused() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cases: Vec<(ringstore::ShardBuilder<Kv>, &str)> = vec![
            (
                builder(&path).snapshot_generations(1),
                "snapshot_generations",
            ),
            (
                builder(&path).snapshot_generations(0),
                "snapshot_generations",
            ),
            (
                builder(&path).checkpoint_policy(CheckpointPolicy {
                    ops_max: Some(0),
                    ..CheckpointPolicy::default()
                }),
                "checkpoint ops_max",
            ),
            (
                builder(&path).checkpoint_policy(CheckpointPolicy {
                    ring_free_slots_min: Some(4096),
                    ..CheckpointPolicy::default()
                }),
                "checkpoint ring_free_slots_min",
            ),
            (
                builder(&path).checkpoint_policy(CheckpointPolicy {
                    ring_full_wait_max: Duration::ZERO,
                    ..CheckpointPolicy::default()
                }),
                "checkpoint ring_full_wait_max",
            ),
            (
                builder(&path).checkpoint_policy(CheckpointPolicy {
                    busy_write_percent: 0,
                    ..CheckpointPolicy::default()
                }),
                "checkpoint busy_write_percent",
            ),
            (
                builder(&path).checkpoint_policy(CheckpointPolicy {
                    busy_write_percent: 101,
                    ..CheckpointPolicy::default()
                }),
                "checkpoint busy_write_percent",
            ),
        ];
        for (builder, name) in cases {
            match builder.open().await {
                Err(Error::InvalidConfig { setting, .. }) => assert_eq!(setting, name),
                Err(other) => panic!("{name}: wrong error {other}"),
                Ok(_) => panic!("{name}: accepted"),
            }
        }
        // One generation is fine when the journal need not keep the
        // previous snapshot's ops.
        let shard = builder(&path)
            .journal_keeps_previous_snapshot(false)
            .snapshot_generations(1)
            .open()
            .await
            .unwrap();
        shard.close().await.unwrap();
    });
}

#[test]
fn a_data_dir_on_tmpfs_is_refused_with_a_clear_error() {
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        return; // no tmpfs here
    };
    let path = dir.path().to_path_buf();
    run(move || async move {
        let result = builder(&path).open().await;
        let message = match result {
            Err(e) => e.to_string(),
            Ok(_) => panic!("opened on tmpfs"),
        };
        assert!(message.contains("O_DIRECT"), "{message}");
    });
}

#[test]
fn a_cancelled_submit_or_checkpoint_does_not_stall_the_shard() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let shard = builder(&path)
            .checkpoint_policy(CheckpointPolicy {
                automatic: false,
                ..CheckpointPolicy::default()
            })
            .open()
            .await
            .unwrap();
        // Cancel submits (and batches of them) at several points of their
        // life: before they are queued, while their write is in flight,
        // while they are parked.
        for yields in 0..6 {
            let cancelled = {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    shard
                        .submit(KvCommand::Put {
                            key: 1000 + yields,
                            value: vec![yields as u8],
                        })
                        .await
                })
            };
            let others: Vec<_> = (0..4u64)
                .map(|n| {
                    let shard = shard.clone();
                    glommio::spawn_local(async move {
                        shard
                            .submit(KvCommand::Put {
                                key: yields * 10 + n,
                                value: vec![1],
                            })
                            .await
                    })
                })
                .collect();
            // A batch too, cancelled at the same points.
            let cancelled_batch = {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    let batch = (0..8u64).map(|n| KvCommand::Put {
                        key: 2000 + yields * 10 + n,
                        value: vec![n as u8],
                    });
                    shard.submit_many(batch).await
                })
            };
            for _ in 0..yields {
                futures_lite::future::yield_now().await;
            }
            drop(cancelled);
            drop(cancelled_batch);
            for other in others {
                let result =
                    glommio::timer::timeout(Duration::from_secs(10), async { Ok(other.await) })
                        .await
                        .expect("a submit after a cancelled one finishes");
                result.unwrap().unwrap();
            }
        }
        // Whatever got an op was applied in order, so more submits go on and
        // the applied op catches up with the journal.
        let at = shard
            .submit_at(KvCommand::Put {
                key: 1,
                value: vec![2],
            })
            .await
            .unwrap()
            .0;
        assert_eq!(at.op, shard.journal().next_op() - 1);
        assert_eq!(shard.applied().op, at.op);

        // A checkpoint dropped midway does not lock the next one out.
        let cancelled = {
            let shard = shard.clone();
            glommio::spawn_local(async move { shard.checkpoint().await })
        };
        futures_lite::future::yield_now().await;
        drop(cancelled);
        glommio::timer::timeout(Duration::from_secs(10), async {
            Ok(shard.checkpoint().await)
        })
        .await
        .expect("a checkpoint after a cancelled one finishes")
        .unwrap();
        let model = shard.read(|kv| kv.values());
        shard.close().await.unwrap();
        let shard = builder(&path).open().await.unwrap();
        assert_eq!(shard.read(|kv| kv.values()), model);
        assert_eq!(shard.applied().op, at.op);
        shard.close().await.unwrap();
    });
}

/// Submits that fill the ring while a checkpoint prunes an old snapshot in
/// steps end the steps (the rest of the file goes at once) and move the
/// watermark on to the new snapshot when the prune is done: they resolve,
/// where they would otherwise wait for a checkpoint that nothing starts.
#[test]
fn submits_that_fill_the_ring_during_a_prune_in_steps_are_not_left_waiting() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let shard = Shard::<Kv>::builder(&path)
            .journal(|j| small_journal(j, 4096).reclaim_step_bytes(64 << 10))
            .snapshot_generations(2)
            .checkpoint_policy(CheckpointPolicy {
                automatic: false,
                ring_full_wait_max: Duration::from_secs(5),
                ..CheckpointPolicy::default()
            })
            .open()
            .await
            .unwrap();
        let put = |key: u64, len: usize| KvCommand::Put {
            key,
            value: value(key, 1, len),
        };
        let submit_all = |keys: std::ops::Range<u64>, len: usize| {
            let tasks: Vec<_> = keys
                .map(|key| {
                    let shard = shard.clone();
                    glommio::spawn_local(async move { shard.submit(put(key, len)).await })
                })
                .collect();
            async move {
                for task in tasks {
                    task.await.unwrap().unwrap();
                }
            }
        };
        // About 3 MiB of state: its snapshot takes 48 steps to give back.
        submit_all(0..256, 12 << 10).await;
        shard.checkpoint().await.unwrap();
        let oldest = shard.snapshot_watermark();
        shard.submit(put(256, 8)).await.unwrap().unwrap();
        shard.checkpoint().await.unwrap();
        // Half the ring above the newest snapshot: the next checkpoint
        // keeps the previous snapshot's ops (the ring is not short).
        submit_all(1000..3000, 8).await;
        let checkpoint = {
            let shard = shard.clone();
            glommio::spawn_local(async move { shard.checkpoint().await })
        };
        let doomed = path
            .join("snapshots")
            .join(format!("snapshot-{oldest:020}.snap.tmp"));
        until("the prune in steps of the oldest snapshot", || {
            doomed.exists()
        })
        .await;
        // Fill the ring while it runs.
        let filling = submit_all(10_000..12_200, 8);
        filling.await;
        assert!(shard.stats().ring_full_waits >= 1, "{:?}", shard.stats());
        checkpoint.await.unwrap();
        assert_eq!(shard.stats().snapshots_pruned, 1);
        shard.close().await.unwrap();
    });
}
