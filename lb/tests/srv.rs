//! SRV discovery against a real unbound serving local SRV and A records.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flowgate_lb::discovery::{Discovery, SrvDiscovery};
use flowgate_pipeline::testing::{require_programs, reserve_port};

struct Unbound(Child, std::path::PathBuf);

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn unbound(port: u16) -> Unbound {
    let dir = std::env::temp_dir().join(format!("flowgate-lb-srv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = format!(
        r#"server:
  interface: 127.0.0.1@{port}
  port: {port}
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "{d}"
  pidfile: "{d}/unbound.pid"
  use-syslog: no
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: yes
  module-config: "iterator"
  local-zone: "svc.test." static
  local-data: "_http._tcp.svc.test. 60 IN SRV 10 20 8080 a.svc.test."
  local-data: "_http._tcp.svc.test. 60 IN SRV 10 10 8081 b.svc.test."
  local-data: "_http._tcp.svc.test. 60 IN SRV 20 50 9090 c.svc.test."
  local-data: "a.svc.test. 60 IN A 127.0.0.11"
  local-data: "b.svc.test. 60 IN A 127.0.0.12"
  local-data: "b.svc.test. 60 IN AAAA ::1"
  local-data: "c.svc.test. 60 IN A 127.0.0.13"
remote-control:
  control-enable: no
"#,
        d = dir.display()
    );
    let path = dir.join("unbound.conf");
    std::fs::write(&path, conf).unwrap();
    let log = std::fs::File::create(dir.join("unbound.log")).unwrap();
    let child = Command::new("unbound")
        .arg("-d")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("unbound starts");
    Unbound(child, dir)
}

impl Unbound {
    fn log(&self) -> String {
        std::fs::read_to_string(self.1.join("unbound.log")).unwrap_or_default()
    }

    fn exited(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(Some(_)))
    }
}

#[tokio::test]
async fn srv_records_become_weighted_backends_of_the_lowest_priority() {
    if !require_programs(&["unbound"]) {
        return;
    }
    // Free for both UDP and TCP (unbound listens on both).
    let port = reserve_port();
    let mut u = unbound(port);
    let resolver = format!("127.0.0.1:{port}").parse().unwrap();
    let mut d = SrvDiscovery::new("_http._tcp.svc.test", resolver, Duration::from_millis(200))
        .timeout(Duration::from_millis(300));
    // unbound needs a moment to start: retry for up to 5 s.
    let mut set = None;
    for _ in 0..25 {
        match tokio::time::timeout(Duration::from_secs(2), d.next()).await {
            Ok(Ok(s)) if !s.is_empty() => {
                set = Some(s);
                break;
            }
            _ if u.exited() => panic!("unbound exited:\n{}", u.log()),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let set = set.unwrap_or_else(|| panic!("unbound did not answer:\n{}", u.log()));
    let got: Vec<(String, u32)> = set.iter().map(|b| (b.addr.to_string(), b.weight)).collect();
    assert_eq!(
        got,
        vec![
            ("127.0.0.11:8080".to_string(), 20),
            ("127.0.0.12:8081".to_string(), 10),
            ("[::1]:8081".to_string(), 10),
        ],
        "priority 20 (c) is left out; b has an A and an AAAA record"
    );
}
