//! Shared by the `remote_*` tests: the two backends the conformance suite
//! runs against (the local filesystem, and a real S3-compatible server,
//! s3s-fs, started per test on a loopback port), and a server that accepts
//! connections and never answers. The engine's object-storage tests
//! include this file too (`engine/tests/object_store_support`).
//!
//! s3s-fs is found through `RINGSTORE_S3S_FS`, then `PATH`, then
//! `~/.cargo/bin`. Without it the S3 tests fail and say to run
//! `scripts/s3-server.sh install`, unless `RINGSTORE_S3_SKIP=1`.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringstore_cache::remote::PART_BYTES_MIN;
use ringstore_cache::{Remote, RemoteBuilder, S3Config};

pub const BUCKET: &str = "ringstore-test";
pub const ACCESS_KEY: &str = "ringstore";
pub const SECRET_KEY: &str = "ringstore-secret";

/// How long a started server may take to accept connections.
const SERVER_READY_WAIT: Duration = Duration::from_secs(20);
/// Ports tried before giving up (another process may grab a free port
/// between our probe and the server's bind).
const SERVER_PORT_ATTEMPTS_MAX: u32 = 5;

/// A backend of the conformance suite.
pub enum Fixture {
    Local { root: PathBuf },
    S3 { server: S3Server },
}

impl Fixture {
    pub fn local(dir: &Path) -> Fixture {
        Fixture::Local {
            root: dir.join("objects-local"),
        }
    }

    /// `None` when the S3 tests are skipped (`RINGSTORE_S3_SKIP=1` and no
    /// s3s-fs); panics when s3s-fs is missing otherwise.
    pub fn s3(dir: &Path) -> Option<Fixture> {
        S3Server::start(&dir.join("s3s-root")).map(|server| Fixture::S3 { server })
    }

    /// A builder for this backend, with the smallest part size so
    /// multipart-sized objects stay small in tests.
    pub fn builder(&self) -> RemoteBuilder {
        let builder = match self {
            Fixture::Local { root } => Remote::local(root),
            Fixture::S3 { server } => Remote::s3(server.config()),
        };
        builder
            .part_bytes(PART_BYTES_MIN)
            .op_timeout(Duration::from_secs(20))
    }

    pub fn remote(&self) -> Remote {
        self.builder().open().expect("open remote")
    }
}

/// The s3s-fs binary, or `None` when missing and skipping is allowed.
pub fn s3s_fs_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RINGSTORE_S3S_FS") {
        return Some(PathBuf::from(path));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("s3s-fs"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(cargo_home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(cargo_home).join("bin/s3s-fs"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/s3s-fs"));
    }
    if let Some(found) = candidates.into_iter().find(|p| p.is_file()) {
        return Some(found);
    }
    if std::env::var("RINGSTORE_S3_SKIP").as_deref() == Ok("1") {
        eprintln!("s3s-fs not found; RINGSTORE_S3_SKIP=1, skipping this S3 test");
        return None;
    }
    panic!(
        "s3s-fs not found (looked at $RINGSTORE_S3S_FS, on PATH and in ~/.cargo/bin): \
         run `scripts/s3-server.sh install`, or set RINGSTORE_S3_SKIP=1 to skip the S3 tests"
    );
}

/// An s3s-fs process serving `root` (the bucket is `root/BUCKET`) on a
/// loopback port. Killed on drop.
pub struct S3Server {
    binary: PathBuf,
    root: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl S3Server {
    pub fn start(root: &Path) -> Option<S3Server> {
        let binary = s3s_fs_binary()?;
        std::fs::create_dir_all(root.join(BUCKET)).expect("create bucket dir");
        for _ in 0..SERVER_PORT_ATTEMPTS_MAX {
            let port = free_port();
            let mut server = S3Server {
                binary: binary.clone(),
                root: root.to_path_buf(),
                port,
                child: None,
            };
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("s3s-fs did not start on any of {SERVER_PORT_ATTEMPTS_MAX} ports");
    }

    /// Starts the process on `self.port`; false if it exited (port taken).
    fn spawn(&mut self) -> bool {
        // Appended to: a restarted server keeps the first one's log.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.with_extension("log"))
            .expect("server log");
        let child = Command::new(&self.binary)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < SERVER_READY_WAIT {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("s3s-fs did not accept connections within {SERVER_READY_WAIT:?}");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> S3Config {
        S3Config::new(BUCKET)
            .endpoint(self.endpoint())
            .credentials(ACCESS_KEY, SECRET_KEY)
            .allow_http(true)
    }

    /// Kills the process (SIGKILL: a crash, not a graceful stop).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        let started = Instant::now();
        while !self.spawn() {
            assert!(
                started.elapsed() < SERVER_READY_WAIT,
                "s3s-fs did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind probe");
    listener.local_addr().expect("probe addr").port()
}

/// A TCP server that accepts every connection and never answers (a hung
/// store). Stops accepting on drop.
pub struct SilentServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentServer {
    pub fn start() -> SilentServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !thread_stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        SilentServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    pub fn config(&self) -> S3Config {
        S3Config::new(BUCKET)
            .endpoint(format!("http://127.0.0.1:{}", self.port))
            .credentials(ACCESS_KEY, SECRET_KEY)
            .allow_http(true)
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A port nothing listens on (bound, then released).
pub fn closed_port_config() -> S3Config {
    S3Config::new(BUCKET)
        .endpoint(format!("http://127.0.0.1:{}", free_port()))
        .credentials(ACCESS_KEY, SECRET_KEY)
        .allow_http(true)
}

/// Relative paths of every `*.part` file under `dir`.
pub fn staging_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".part") {
                found.push(
                    path.strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    found
}
