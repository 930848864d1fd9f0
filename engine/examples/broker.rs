//! A small TCP metadata broker on loopback: ringstore embedded in a server
//! that runs its own glommio reactors, one shard and one listener per
//! reactor.
//!
//! Each reactor opens its own `Shard<Metadata>` in `<data-dir>/shard-NNN`
//! and listens on `127.0.0.1:<base-port + shard>`. A request's key (its
//! stream's name) routes it with `ringstore::runtime::shard_for_key`; the
//! client connects to the owning shard's port, and a shard refuses another
//! shard's key. The protocol (length-prefixed bincode frames, pipelined,
//! replies in order) is in `broker_proto/mod.rs`; the connection handling
//! in `broker_proto/server.rs`.
//!
//! Build both, run the broker, then load it from a second terminal (or in
//! one shell with `&`, as here):
//!
//! ```text
//! cargo build --release -p ringstore --example broker --example broker_load
//! cargo run --release -p ringstore --example broker -- --shards 2 --duration 30 &
//! sleep 1 && cargo run --release -p ringstore --example broker_load -- --shards 2 --duration 5
//! ```
//!
//! The data directory (default `./broker-data`) must be on a disk
//! filesystem such as ext4 or xfs: the journal uses O_DIRECT, which tmpfs
//! lacks. It remembers its shard count, and refuses another (routing
//! depends on it). Ctrl-C, SIGTERM or `--duration` stop the broker: the
//! listeners stop, each shard closes (its journal's final sync), and the
//! shards' counters are printed.

mod broker_proto;
// The `ringstore` tool's log setup (stderr, `RUST_LOG`, warnings by
// default), so the broker logs as the tool does.
#[path = "../src/bin/ringstore/logging.rs"]
mod logging;

use broker_proto::server::{serve, Route};
use broker_proto::{shard_addr, BASE_PORT_DEFAULT};
use clap::Parser;
use glommio::{net::TcpListener, LocalExecutorBuilder, Placement};
use ringstore::broker::Metadata;
use ringstore::runtime::{startup, IO_MEMORY_BYTES_DEFAULT};
use ringstore::Shard;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

/// A TCP broker of stream/topic/group metadata, one listener per shard.
#[derive(Parser, Debug)]
struct Args {
    /// Shards (reactors, listeners). Default: one per CPU this process may
    /// use.
    #[arg(long, default_value_t = default_shards())]
    shards: usize,
    /// Port of shard 0; shard `i` listens on `base-port + i`.
    #[arg(long, default_value_t = BASE_PORT_DEFAULT)]
    base_port: u16,
    /// Data directory (on a disk filesystem, not tmpfs).
    #[arg(long, default_value = "broker-data")]
    data_dir: PathBuf,
    /// Leave the reactors unpinned (a shared machine); default: shard `i`
    /// pinned to the `i`-th CPU.
    #[arg(long)]
    unpinned: bool,
    /// Stop after this many seconds (default: run until Ctrl-C/SIGTERM).
    #[arg(long)]
    duration: Option<u64>,
    /// Take a checkpoint of every shard before closing it.
    #[arg(long)]
    final_checkpoint: bool,
    /// Start shard N empty although the data directory records it and its
    /// directory is gone: its data is given up (repeatable).
    #[arg(long, value_name = "N")]
    abandon_missing_shard: Vec<usize>,
}

fn default_shards() -> usize {
    startup::available_cpus().len().max(1)
}

/// Why the broker stops.
#[derive(Debug)]
enum Stop {
    Signal(i32),
    Elapsed,
}

/// What a shard's reactor reports once it listens.
type Ready = (usize, Result<SocketAddr, String>);

fn main() -> ExitCode {
    logging::init_logging();
    let args = Args::parse();
    // Before any other thread exists, so that every thread inherits the
    // blocked signals and only the waiter sees them.
    let (stop_tx, stop_rx) = mpsc::channel();
    let signals_tx = stop_tx.clone();
    if let Err(e) = signals::block_and_wait(move |signal| {
        let _ = signals_tx.send(Stop::Signal(signal));
    }) {
        eprintln!("broker: cannot handle signals: {e}");
        return ExitCode::FAILURE;
    }
    match run(&args, stop_tx, &stop_rx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("broker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    args: &Args,
    stop_tx: mpsc::Sender<Stop>,
    stop_rx: &mpsc::Receiver<Stop>,
) -> Result<(), String> {
    if !(1..=ringstore::runtime::SHARDS_MAX).contains(&args.shards) {
        return Err(format!(
            "--shards {}: 1 to {}",
            args.shards,
            ringstore::runtime::SHARDS_MAX
        ));
    }
    let addrs: Vec<SocketAddr> = (0..args.shards)
        .map(|shard| {
            shard_addr("127.0.0.1", args.base_port, shard)
                .ok_or_else(|| format!("shard {shard}'s port is above 65535"))
        })
        .collect::<Result<_, _>>()?;
    let cpus = startup::place_shards(args.shards, None).map_err(|e| e.to_string())?;
    let memlock = startup::memlock_limit().map_err(|e| e.to_string())?;
    startup::check_memlock(memlock, args.shards, IO_MEMORY_BYTES_DEFAULT)
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("create {}: {e}", args.data_dir.display()))?;
    // The same manifest as `ringstore::Engine`'s: the directory records its
    // shard count, since every key's state lives on the shard it routed to.
    startup::check_manifest(&args.data_dir, args.shards).map_err(|e| e.to_string())?;
    // A shard the directory records as created but whose files are gone is
    // refused, not started empty.
    startup::check_created_shards(&args.data_dir, &args.abandon_missing_shard)
        .map_err(|e| e.to_string())?;

    // Dropping `listening` tells every reactor to stop. Dropping `serving`
    // lets the reactors serve: only once every shard has opened and the
    // data directory records them all, so no shard acknowledges a command
    // before a lost directory of it would be refused.
    let (listening, stopping) = async_channel::bounded::<()>(1);
    let (serving, may_serve) = async_channel::bounded::<()>(1);
    let (ready_tx, ready_rx) = mpsc::channel::<Ready>();
    let mut reactors = Vec::with_capacity(args.shards);
    for (index, (&cpu, &addr)) in cpus.iter().zip(&addrs).enumerate() {
        let placement = if args.unpinned {
            Placement::Unbound
        } else {
            Placement::Fixed(cpu)
        };
        let dir = startup::shard_dir(&args.data_dir, index);
        let route = Route {
            shard: index,
            shards: args.shards,
        };
        let (stopping, ready, final_checkpoint) =
            (stopping.clone(), ready_tx.clone(), args.final_checkpoint);
        let may_serve = may_serve.clone();
        let spawned = LocalExecutorBuilder::new(placement)
            .name(&format!("broker-shard-{index}"))
            .io_memory(IO_MEMORY_BYTES_DEFAULT)
            .spawn(move || async move {
                let opened = Shard::<Metadata>::builder(&dir)
                    .metrics_label(index.to_string())
                    .open()
                    .await;
                let shard = match opened {
                    Ok(shard) => shard,
                    Err(e) => {
                        let _ = ready.send((index, Err(format!("open {}: {e}", dir.display()))));
                        return;
                    }
                };
                match TcpListener::bind(addr) {
                    Ok(listener) => {
                        let _ = ready.send((index, Ok(addr)));
                        let _ = may_serve.recv().await;
                        if stopping.is_closed() {
                            close(index, &shard, final_checkpoint).await;
                            return;
                        }
                        let stop = async move {
                            let _ = stopping.recv().await;
                        };
                        serve(shard.clone(), listener, route, stop).await;
                    }
                    Err(e) => {
                        let _ = ready.send((index, Err(format!("listen on {addr}: {e}"))));
                    }
                }
                close(index, &shard, final_checkpoint).await;
            });
        match spawned {
            Ok(handle) => reactors.push(handle),
            Err(e) => {
                drop(listening);
                drop(serving);
                join(reactors);
                return Err(format!("start shard {index}'s reactor: {e}"));
            }
        }
    }
    drop(ready_tx);

    let mut failures = Vec::new();
    let mut listening_on = vec![None; args.shards];
    for _ in 0..args.shards {
        match ready_rx.recv() {
            Ok((shard, Ok(addr))) => listening_on[shard] = Some(addr),
            Ok((shard, Err(e))) => failures.push(format!("shard {shard}: {e}")),
            Err(_) => {
                failures.push("a reactor stopped before it listened".into());
                break;
            }
        }
    }
    if failures.is_empty() {
        if let Err(e) = startup::record_created_shards(&args.data_dir) {
            failures.push(e.to_string());
        }
    }
    if !failures.is_empty() {
        drop(listening);
        drop(serving);
        join(reactors);
        return Err(failures.join("; "));
    }
    drop(serving);
    for (shard, addr) in listening_on.iter().enumerate() {
        let addr = addr.map_or_else(String::new, |a| a.to_string());
        let dir = startup::shard_dir(&args.data_dir, shard);
        let placed = if args.unpinned {
            "unpinned".to_owned()
        } else {
            format!("cpu {}", cpus[shard])
        };
        println!(
            "shard {shard} listening on {addr} ({placed}, data in {})",
            dir.display()
        );
    }

    let stop = match args.duration {
        Some(seconds) => stop_rx
            .recv_timeout(Duration::from_secs(seconds))
            .unwrap_or(Stop::Elapsed),
        None => stop_rx.recv().unwrap_or(Stop::Elapsed),
    };
    drop(stop_tx);
    match stop {
        Stop::Signal(signal) => println!("signal {signal}: stopping"),
        Stop::Elapsed => println!("duration elapsed: stopping"),
    }
    drop(listening);
    join(reactors);
    Ok(())
}

/// Closes a shard after its listener stopped, and prints its counters.
async fn close(index: usize, shard: &Shard<Metadata>, final_checkpoint: bool) {
    if final_checkpoint {
        if let Err(e) = shard.checkpoint().await {
            eprintln!("broker: shard {index}: final checkpoint failed: {e}");
        }
    }
    let stats = shard.stats();
    let closed = shard.close().await;
    let batch = stats.journal.entries_written as f64 / stats.journal.writes.max(1) as f64;
    println!(
        "shard {index}: {} commands applied ({} rejected), {} journal writes, {} fsyncs, \
         {batch:.1} entries per write, ack p50 {:?} p99 {:?}; {}",
        stats.commands_applied,
        stats.commands_rejected,
        stats.journal.writes,
        stats.journal.fsyncs,
        stats.ack_latency.p50,
        stats.ack_latency.p99,
        match closed {
            Ok(()) => "closed cleanly".to_owned(),
            Err(e) => format!("close failed: {e}"),
        }
    );
}

fn join(reactors: Vec<glommio::ExecutorJoinHandle<()>>) {
    for (shard, reactor) in reactors.into_iter().enumerate() {
        if let Err(e) = reactor.join() {
            eprintln!("broker: shard {shard}'s reactor failed: {e}");
        }
    }
}

/// Ctrl-C and SIGTERM as a callback on a thread of their own, so the
/// reactors never see a signal and the broker stops through its normal
/// path. The only unsafe code of the example.
mod signals {
    /// Blocks SIGINT and SIGTERM in the calling thread (and so in every
    /// thread it starts later) and calls `on_signal` from a dedicated
    /// thread when one arrives.
    pub fn block_and_wait(on_signal: impl FnOnce(i32) + Send + 'static) -> std::io::Result<()> {
        // SAFETY: `sigset_t` is plain data and `sigemptyset` initialises it
        // before any other use; the pointers are to a live local.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            set
        };
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if blocked != 0 {
            return Err(std::io::Error::from_raw_os_error(blocked));
        }
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut signal = 0;
                // SAFETY: `set` is initialised and `signal` is a live local.
                let waited = unsafe { libc::sigwait(&set, &mut signal) };
                if waited == 0 {
                    on_signal(signal);
                }
            })?;
        Ok(())
    }
}
