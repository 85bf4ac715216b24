//! Helpers shared by the end-to-end tests: ports, temp dirs, the `flowgate` binary and
//! real peers started and stopped by PID.
//!
//! Peers follow the workspace's one policy ([`peers`], [`python_module`], from
//! `flowgate_pipeline::testing`): a test checks for its peers first and returns early when
//! they are missing, unless it runs under CI, with `FLOWGATE_NO_SKIP` or as root, where a
//! missing peer fails it. Ports a peer must be told come from [`reserve_port`], which no
//! concurrent test can be handed too; in-process servers bind port 0. Tests wait for a
//! condition with [`wait_until`], not with a fixed sleep.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod load;
#[cfg(feature = "mesh")]
pub mod mesh;
pub mod podnet;

#[allow(unused_imports, reason = "not every test file uses every helper")]
pub use flowgate_pipeline::testing::{reserve_port, wait_until};

/// Whether every one of `programs` is installed, under the shared policy: `false` (the test
/// returns) only where a missing peer may skip; under CI or as root it fails the test.
pub fn peers(programs: &[&str]) -> bool {
    flowgate_pipeline::testing::require_programs(programs)
}

/// Whether python3 has `module` (from the PyPI package `pip`), under the same policy.
pub fn python_module(module: &str, pip: &str) -> bool {
    peers(&["python3"]) && flowgate_pipeline::testing::require_python_module(module, pip)
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("flowgate-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process stopped (SIGTERM, then SIGKILL) by its PID on drop. Its stderr, when
/// piped, is collected as it comes (so a chatty peer never blocks on a full pipe).
pub struct Proc {
    pub child: Child,
    pub name: String,
    stderr: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Takes over `child` (and its piped stderr, if any).
    pub fn new(mut child: Child, name: &str) -> Proc {
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let reader = child.stderr.take().map(|mut pipe| {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            })
        });
        Proc {
            child,
            name: name.into(),
            stderr,
            reader,
        }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} {}", self.pid());
    }
    /// What the process has written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(
            &self
                .stderr
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
    /// Stops the process and returns its stderr.
    pub fn stop(mut self) -> String {
        self.terminate();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.stderr_so_far()
    }
    /// Waits up to 10 s for `port` on 127.0.0.1 to accept; fails at once, with the
    /// process's stderr, if the process exits first.
    pub fn wait_port(&mut self, port: u16) {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let up = wait_until(Duration::from_secs(10), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before listening on {addr}: {}",
                    self.name,
                    self.stderr_so_far()
                );
            }
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        assert!(
            up,
            "{} does not listen on {addr}: {}",
            self.name,
            self.stderr_so_far()
        );
    }
    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        if wait_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        }) {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    /// Stops the process; when the test is failing, prints what it wrote to stderr (the
    /// last 4 KiB), so a failure comes with the logs of every process the test ran.
    fn drop(&mut self) {
        self.terminate();
        if std::thread::panicking() {
            if let Some(r) = self.reader.take() {
                let _ = r.join();
            }
            let log = self.stderr_so_far();
            let mut from = log.len().saturating_sub(4096);
            while !log.is_char_boundary(from) {
                from += 1;
            }
            let tail = &log[from..];
            if !tail.trim().is_empty() {
                eprintln!(
                    "--- stderr of {} (pid {}):\n{tail}",
                    self.name,
                    self.child.id()
                );
            }
        }
    }
}

/// Starts `flowgate run CONFIG` and waits until `port` accepts connections.
pub fn flowgate_run(config: &Path, ports: &[u16]) -> Proc {
    flowgate_run_log(config, ports, "warn")
}

/// Like [`flowgate_run`], with a log level.
pub fn flowgate_run_log(config: &Path, ports: &[u16], log: &str) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .arg("run")
        .arg(config)
        .env("RUST_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut p = Proc::new(child, "flowgate");
    for port in ports {
        p.wait_port(*port);
    }
    p
}

/// Starts `flowgate-gateway run CONFIG` and waits until `port` accepts connections.
pub fn gateway_run(config: &Path, port: u16) -> Proc {
    gateway_run_log(config, port, "warn")
}

/// Like [`gateway_run`], with a log filter.
pub fn gateway_run_log(config: &Path, port: u16, log: &str) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_flowgate-gateway"))
        .arg("run")
        .arg(config)
        .env("RUST_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut p = Proc::new(child, "flowgate-gateway");
    p.wait_port(port);
    p
}

/// Runs `flowgate check FILE` and returns (exit code, stderr).
pub fn flowgate_check(config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .arg("check")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits up to 10 s for a TCP port on 127.0.0.1 to accept (prefer [`Proc::wait_port`] for a
/// process the test started).
pub fn wait_port(port: u16) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(
        wait_until(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        }),
        "nothing listens on {addr}"
    );
}

/// A TCP echo server on a thread per connection; replies are prefixed with `tag` when set.
/// Stops when the returned guard is dropped (it stops accepting).
pub struct Echo {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Echo {
    pub fn start(tag: Option<&str>) -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let tag = tag.map(|t| t.as_bytes().to_vec());
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let tag = tag.clone();
                        c.set_nonblocking(false).unwrap();
                        std::thread::spawn(move || {
                            let mut buf = vec![0u8; 64 * 1024];
                            if let Some(t) = &tag
                                && c.write_all(t).is_err()
                            {
                                return;
                            }
                            loop {
                                match c.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        if c.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Echo { port, stop }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// nginx in the foreground as a single process, on a config written into `dir` (the test
/// checked `peers(&["nginx"])`).
pub fn nginx(dir: &TempDir, server_blocks: &str) -> Proc {
    nginx_in(None, dir, server_blocks)
}

/// `program`, run in network namespace `netns` when given (`ip netns exec` execs it: the
/// PID is the program's).
pub fn in_netns(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// [`in_netns`], run as user and group `uid` when given (`setpriv` execs the program: the
/// PID is the program's) — a sidecar as the proxy user whose traffic capture passes.
pub fn as_user(netns: Option<&str>, uid: Option<u32>, program: &str) -> Command {
    match uid {
        Some(uid) => {
            let mut c = in_netns(netns, "setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                program,
            ]);
            c
        }
        None => in_netns(netns, program),
    }
}

/// [`nginx`] in network namespace `netns` when given (`ip netns exec` execs nginx: the PID
/// is nginx's).
pub fn nginx_in(netns: Option<&str>, dir: &TempDir, server_blocks: &str) -> Proc {
    std::fs::create_dir_all(dir.path("logs")).unwrap();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\nerror_log {err} warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n \
         fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{server_blocks}\n}}\n",
        pid = dir.path("nginx.pid").display(),
        err = dir.path("logs/error.log").display(),
        d = dir.0.display(),
    );
    let path = dir.write("nginx.conf", &conf);
    daemon(
        in_netns(netns, "nginx")
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&path),
        "nginx",
    )
}

/// Starts a server program in the foreground (no stdin, stdout dropped, stderr kept for
/// [`Proc::stop`]); it is stopped by its PID when the guard drops.
pub fn daemon(cmd: &mut Command, name: &str) -> Proc {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc::new(child, name)
}

/// Sends an HTTP/1.0 GET over `stream` and returns the response body.
pub fn http_get(mut stream: TcpStream, path: &str) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut resp = String::new();
    stream.read_to_string(&mut resp).unwrap();
    match resp.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_string(),
        None => panic!("not an HTTP response: {resp:?}"),
    }
}

/// A test PKI made with the `openssl` command line: a CA and leaves it signs, as PEM files.
pub struct OpensslPki<'a> {
    pub dir: &'a TempDir,
    pub name: String,
}

impl<'a> OpensslPki<'a> {
    /// Makes `<name>-ca.pem` / `<name>-ca.key` in `dir`.
    pub fn new(dir: &'a TempDir, name: &str) -> Self {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}-ca.key"),
                "-out",
                &format!("{name}-ca.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=Flowgate test CA {name}"),
            ],
        );
        OpensslPki {
            dir,
            name: name.to_string(),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path(&format!("{}-ca.pem", self.name))
    }

    /// Makes `<leaf>.pem` / `<leaf>.key` for `dns` (server) or a client certificate.
    pub fn leaf(&self, leaf: &str, dns: &str, client: bool) -> (PathBuf, PathBuf) {
        self.leaf_with(leaf, dns, &format!("DNS:{dns}"), client)
    }

    /// [`OpensslPki::leaf`] with common name `cn` and subject alternative names `san`
    /// (openssl's syntax: `URI:spiffe://…`, `DNS:…`).
    pub fn leaf_with(&self, leaf: &str, cn: &str, san: &str, client: bool) -> (PathBuf, PathBuf) {
        let dns = cn;
        let usage = if client { "clientAuth" } else { "serverAuth" };
        self.dir.write(
            &format!("{leaf}.ext"),
            &format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"),
        );
        openssl(
            self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{leaf}.key"),
                "-out",
                &format!("{leaf}.csr"),
                "-subj",
                &format!("/CN={dns}"),
            ],
        );
        openssl(
            self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{leaf}.csr"),
                "-CA",
                &format!("{}-ca.pem", self.name),
                "-CAkey",
                &format!("{}-ca.key", self.name),
                "-CAcreateserial",
                "-out",
                &format!("{leaf}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{leaf}.ext"),
            ],
        );
        (
            self.dir.path(&format!("{leaf}.pem")),
            self.dir.path(&format!("{leaf}.key")),
        )
    }
}

fn openssl(dir: &TempDir, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs curl with `args`; returns (success, stdout, stderr).
pub fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
