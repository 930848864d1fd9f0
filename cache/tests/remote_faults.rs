//! Pins what the object-storage layer does when the store misbehaves: a
//! server that accepts and never answers costs one deadline (a typed
//! `Timeout` naming op and key) while the glommio reactor keeps running; a
//! refused connection is retried with backoff, counted, then reported as
//! `Unavailable`; an S3 server killed in the middle of a multipart upload
//! gives a typed, transient error, leaves the cache and the local file
//! intact, and the same write succeeds once the server is back; config
//! errors name the setting; shutdown joins the I/O thread and later calls
//! fail with `Shutdown`.

mod common;
mod remote_support;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{bytes, run, tempdir};
use remote_support::{closed_port_config, staging_files, S3Server, SilentServer};
use ringstore_cache::remote::PART_BYTES_MIN;
use ringstore_cache::{Cache, Error, Remote, RemoteError, S3Config, Tiered};

const DOMAIN: &str = "5b0e8f4c-0000-4000-8000-00000000f00d";

#[test]
fn hung_server_times_out_promptly_without_blocking_the_reactor() {
    let server = SilentServer::start();
    let timeout = Duration::from_millis(300);
    let remote = Remote::s3(server.config())
        .op_timeout(timeout)
        .open()
        .unwrap();
    let dir = tempdir();
    let cache_dir = dir.path().join("cache");
    run(move || async move {
        // A task that must keep ticking while the calls hang.
        let ticks = Rc::new(Cell::new(0u32));
        let ticker = {
            let ticks = Rc::clone(&ticks);
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    ticks.set(ticks.get() + 1);
                }
            })
        };
        let started = Instant::now();
        match remote.put("a/key", &b"bytes"[..]).await {
            Err(RemoteError::Timeout {
                op: "put",
                key,
                allowed,
            }) => {
                assert_eq!(key, "a/key");
                assert!(allowed >= timeout);
            }
            other => panic!("expected a put timeout, got {other:?}"),
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= timeout, "{elapsed:?}");
        assert!(elapsed < timeout * 5, "not prompt: {elapsed:?}");
        // A blocked reactor makes at most one tick; a loaded machine may
        // make fewer than the wait allows.
        assert!(
            ticks.get() >= 3,
            "the reactor stalled: {} ticks",
            ticks.get()
        );
        assert!(matches!(
            remote.head("a/key").await,
            Err(RemoteError::Timeout { op: "head", .. })
        ));
        assert!(matches!(
            remote.get_stream("a/key").await,
            Err(RemoteError::Timeout { op: "get", .. })
        ));
        assert!(matches!(
            remote.list("a").await,
            Err(RemoteError::Timeout { op: "list", .. })
        ));
        // Through the cache: a typed error, nothing left behind.
        let cache = Rc::new(Cache::builder(&cache_dir).open().await.unwrap());
        let tiered = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN).unwrap();
        match tiered.put("k", b"v").await {
            Err(Error::Remote(error)) => assert!(error.is_transient(), "{error}"),
            other => panic!("expected a remote error, got {other:?}"),
        }
        assert!(matches!(
            tiered.get("k").await,
            Err(Error::Remote(RemoteError::Timeout { op: "get", .. }))
        ));
        let stats = cache.stats();
        assert_eq!((stats.objects, stats.reserved_bytes), (0, 0));
        assert!(staging_files(cache.objects_dir()).is_empty());
        let remote_stats = remote.stats();
        assert_eq!(remote_stats.timeouts, 6);
        assert_eq!(remote_stats.calls_failed, 6);
        // A shorter deadline for one call through a derived handle.
        let quick = remote.with_op_timeout(Duration::from_millis(50)).unwrap();
        let started = Instant::now();
        assert!(matches!(
            quick.head("a/key").await,
            Err(RemoteError::Timeout { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(1));
        ticker.cancel().await;
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
    drop(server);
}

#[test]
fn refused_connections_are_retried_then_unavailable() {
    let remote = Remote::s3(closed_port_config())
        .attempts_max(3)
        .backoff(Duration::from_millis(10), Duration::from_millis(20))
        .open()
        .unwrap();
    run(move || async move {
        match remote.put("k", &b"v"[..]).await {
            Err(RemoteError::Unavailable {
                op: "put",
                key,
                attempts: 3,
                ..
            }) => assert_eq!(key, "k"),
            other => panic!("expected Unavailable after 3 attempts, got {other:?}"),
        }
        let stats = remote.stats();
        assert_eq!(stats.retries, 2);
        assert_eq!(stats.calls_failed, 1);
        remote.shutdown().await.unwrap();
    });
}

#[test]
fn s3_server_killed_mid_upload_then_restarted() {
    let dir = tempdir();
    let Some(server) = S3Server::start(&dir.path().join("s3s-root")) else {
        return;
    };
    let remote = Remote::s3(server.config())
        .part_bytes(PART_BYTES_MIN)
        .attempts_max(3)
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .op_timeout(Duration::from_secs(10))
        .open()
        .unwrap();
    // Eight parts: the server dies after the first has landed.
    let data = bytes(8 * PART_BYTES_MIN as usize, 5);
    let file = dir.path().join("snapshot.bin");
    std::fs::write(&file, &data).unwrap();
    let cache_dir = dir.path().join("cache");
    let server_root = server.root().to_path_buf();
    let mut server = server;
    run(move || async move {
        let cache = Rc::new(Cache::builder(&cache_dir).open().await.unwrap());
        let tiered = Rc::new(Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN).unwrap());
        let upload = {
            let tiered = Rc::clone(&tiered);
            let file = file.clone();
            glommio::spawn_local(async move { tiered.put_file("snapshot", &file).await })
        };
        // Wait for the first part on the server, then kill it.
        let started = Instant::now();
        loop {
            let landed = std::fs::read_dir(&server_root)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains(".part-1"));
            if landed {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no part landed"
            );
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        server.kill();
        let key = tiered.object_key("snapshot").unwrap();
        match upload.await {
            Err(Error::Remote(error)) => {
                assert!(error.is_transient(), "{error}");
                match &error {
                    RemoteError::Unavailable { op, key: k, .. }
                    | RemoteError::Timeout { op, key: k, .. } => {
                        assert_eq!((*op, k.as_str()), ("put_file", key.as_str()));
                    }
                    other => panic!("unexpected error {other:?}"),
                }
            }
            other => panic!("expected a remote error, got {other:?}"),
        }
        assert!(remote.stats().retries >= 1);
        // Local state intact: nothing cached, nothing reserved, no staging
        // file; the source file untouched.
        assert!(!cache.contains(&key).unwrap());
        let stats = cache.stats();
        assert_eq!((stats.objects, stats.bytes), (0, 0));
        assert_eq!((stats.reserved_bytes, stats.reserved_objects), (0, 0));
        assert!(staging_files(cache.objects_dir()).is_empty());
        assert_eq!(std::fs::read(&file).unwrap(), data);

        server.restart();
        tiered.put_file("snapshot", &file).await.unwrap();
        assert_eq!(remote.head(&key).await.unwrap().bytes, data.len() as u64);
        assert_eq!(
            &tiered.get("snapshot").await.unwrap().unwrap()[..],
            &data[..]
        );
        assert_eq!(tiered.stats().hits, 1, "served from the cache");
        assert_eq!(
            &remote.get_bytes(&key, u64::MAX).await.unwrap()[..],
            &data[..]
        );
        assert_eq!(cache.stats().objects, 1);
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

#[test]
fn config_errors_name_the_setting() {
    let dir = tempdir();
    let root = dir.path().join("objects");
    let setting = |result: Result<Remote, RemoteError>| match result {
        Err(RemoteError::Config { setting, .. }) => setting,
        other => panic!("expected a config error, got {other:?}"),
    };
    assert_eq!(
        setting(Remote::local(&root).part_bytes(1).open()),
        "part_bytes"
    );
    assert_eq!(
        setting(Remote::local(&root).op_timeout(Duration::ZERO).open()),
        "op_timeout"
    );
    assert_eq!(
        setting(Remote::local(&root).attempts_max(0).open()),
        "attempts_max"
    );
    assert_eq!(
        setting(
            Remote::local(&root)
                .backoff(Duration::from_secs(2), Duration::from_secs(1))
                .open()
        ),
        "backoff"
    );
    assert_eq!(
        setting(Remote::local(&root).in_flight_max(0).open()),
        "in_flight_max"
    );
    assert_eq!(setting(Remote::local("").open()), "local root");
    let s3 = || S3Config::new("bucket").credentials("a", "b");
    assert_eq!(
        setting(Remote::s3(s3().endpoint("http://127.0.0.1:1")).open()),
        "S3Config::allow_http"
    );
    assert_eq!(
        setting(Remote::s3(s3().endpoint("ftp://x")).open()),
        "S3Config::endpoint"
    );
    assert_eq!(
        setting(Remote::s3(S3Config::new("")).open()),
        "S3Config::bucket"
    );
    let mut half = S3Config::new("bucket");
    half.access_key_id = Some("id".into());
    assert_eq!(setting(Remote::s3(half).open()), "S3Config::credentials");
    assert_eq!(
        setting(Remote::s3(s3().region("")).open()),
        "S3Config::region"
    );
    // The secret never shows in Debug.
    let shown = format!("{:?}", S3Config::new("b").credentials("id", "hunter2"));
    assert!(!shown.contains("hunter2"), "{shown}");
    // The local default creates its root.
    assert!(!root.exists());
    let remote = Remote::local(&root).open().unwrap();
    assert!(root.is_dir());
    assert!(remote.describe().starts_with("local:"));
    run(move || async move { remote.shutdown().await.unwrap() });
}

#[test]
fn shutdown_joins_the_thread_and_fails_later_calls() {
    let dir = tempdir();
    let remote = Remote::local(dir.path().join("objects")).open().unwrap();
    let clone = remote.clone();
    run(move || async move {
        remote.put("k", &b"v"[..]).await.unwrap();
        let started = Instant::now();
        remote.shutdown().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        // Every clone is shut down; a second shutdown returns at once.
        assert!(matches!(clone.head("k").await, Err(RemoteError::Shutdown)));
        assert!(matches!(
            remote.put("k2", &b"v"[..]).await,
            Err(RemoteError::Shutdown)
        ));
        clone.shutdown().await.unwrap();
        assert_eq!(remote.stats().rejected, 2);
    });
}

#[test]
fn dropping_a_download_cancels_it_and_the_remote_stays_usable() {
    let dir = tempdir();
    let remote = Remote::local(dir.path().join("objects")).open().unwrap();
    run(move || async move {
        let big = bytes(4 << 20, 1);
        remote.put("big", big.clone()).await.unwrap();
        let mut reader = remote.get_stream("big").await.unwrap();
        assert_eq!(reader.len(), big.len() as u64);
        let first = reader.next_chunk().await.unwrap().unwrap();
        assert_eq!(&first[..], &big[..first.len()]);
        drop(reader);
        // Read it whole through a new stream.
        let mut reader = remote.get_stream("big").await.unwrap();
        let mut got = Vec::new();
        while let Some(chunk) = reader.next_chunk().await.unwrap() {
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, big);
        remote.shutdown().await.unwrap();
    });
}

#[test]
fn s3_without_conditional_put_checks_with_head_first() {
    let dir = tempdir();
    let Some(server) = S3Server::start(&dir.path().join("s3s-root")) else {
        return;
    };
    let remote = Remote::s3(server.config().conditional_put(false))
        .open()
        .unwrap();
    assert_eq!(
        remote.create_check(),
        ringstore_cache::CreateCheck::HeadFirst
    );
    run(move || async move {
        remote.put("k", &b"first"[..]).await.unwrap();
        assert!(matches!(
            remote.put("k", &b"second"[..]).await,
            Err(RemoteError::AlreadyExists { op: "put", .. })
        ));
        assert_eq!(&remote.get_bytes("k", 100).await.unwrap()[..], b"first");
        let stats = remote.stats();
        assert_eq!((stats.heads, stats.already_exists, stats.puts), (2, 1, 1));
        remote.shutdown().await.unwrap();
    });
    drop(server);
}
